/*
 * C ABI tests for intents: a workflow intent over C native tools, a C handler intent
 * keeping session state across submits and calling a tool (on a library thread), a
 * handler error becoming a "failed" record, a handler submitting another intent, a
 * handler unregistering itself, unregistering while a call runs (the finaliser waits
 * for it), concurrent submits from 8 threads, unknown (NOT_FOUND), duplicate
 * (ALREADY_EXISTS), misuse (NULLs, invalid UTF-8, bad JSON, invalid workflows), and
 * every finaliser called exactly once, also by utp_engine_free().
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static int load(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void bump(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }

static void sleep_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* Wait up to `ms` for *p >= want. */
static int wait_at_least(const int *p, int want, long ms) {
    for (long waited = 0; waited < ms; waited += 5) {
        if (load(p) >= want) return 1;
        sleep_ms(5);
    }
    return load(p) >= want;
}

static int32_t set_result(utp_tool_result_t *result, const char *json) {
    utp_error_t *err = utp_tool_result_set_json(result, json);
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

static void count_free(void *user_data) { bump((int *)user_data); }

/* ------------------------------------------------------------------ tools */

struct tool_state {
    int calls;
    int freed;
};

static void tool_free(void *user_data) { bump(&((struct tool_state *)user_data)->freed); }

/* inv.get {sku} -> {"sku": sku, "count": 4} */
static int32_t get_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    bump(&((struct tool_state *)user_data)->calls);
    char sku[64], out[160];
    json_str(args_json, "sku", sku, sizeof sku);
    snprintf(out, sizeof out, "{\"sku\": \"%s\", \"count\": 4}", sku);
    return set_result(result, out);
}

/* inv.set {sku, count} -> {"sku": sku, "count": count} */
static int32_t set_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    bump(&((struct tool_state *)user_data)->calls);
    char sku[64], out[160];
    json_str(args_json, "sku", sku, sizeof sku);
    snprintf(out, sizeof out, "{\"sku\": \"%s\", \"count\": %ld}", sku, json_num(args_json, "count"));
    return set_result(result, out);
}

static const char *RESTOCK =
    "{\"name\": \"restock\","
    " \"inputs\": {\"sku\": {\"type\": \"string\"}, \"extra\": {\"type\": \"integer\", \"default\": 100}},"
    " \"steps\": ["
    "  {\"id\": \"stock\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"${{ inputs.sku }}\"}},"
    "  {\"id\": \"update\", \"tool\": \"inv.set\", \"depends_on\": [\"stock\"],"
    "   \"args\": {\"sku\": \"${{ inputs.sku }}\", \"count\": \"${{ steps.stock.output.count + inputs.extra }}\"}}"
    " ],"
    " \"outputs\": {\"count\": \"${{ steps.update.output.count }}\"}}";

/* --------------------------------------------------------------- handlers */

/* user_data of the "lookup" handler. */
struct handler_state {
    utp_engine_t *engine;
    int calls;
    int freed;
    int off_main; /* calls that ran on a thread other than the main one */
    pthread_t main_thread;
};

static void handler_free(void *user_data) { bump(&((struct handler_state *)user_data)->freed); }

/* lookup {sku, fail?, status?}: reads and bumps state.count of the request's session,
 * calls inv.get, returns {"seen_before", "stock", "execution", "tenant"}. */
static int32_t lookup_handler(void *user_data, const char *context_json, const char *params_json,
                              utp_tool_result_t *result) {
    struct handler_state *h = user_data;
    bump(&h->calls);
    if (!pthread_equal(pthread_self(), h->main_thread)) bump(&h->off_main);
    if (strstr(params_json, "\"fail\":true") != NULL) {
        utp_error_free(utp_tool_result_set_error(result, "the handler gave up"));
        return 1;
    }
    long status = json_num(params_json, "status");
    if (status > 0) return (int32_t)status; /* failure without a message */

    char exec[64], tenant[64], session[64], sku[64], args[128], out[512];
    json_str(context_json, "execution_id", exec, sizeof exec);
    json_str(context_json, "tenant", tenant, sizeof tenant);
    json_str(context_json, "session_id", session, sizeof session);
    json_str(params_json, "sku", sku, sizeof sku);
    const char *t = tenant[0] ? tenant : NULL;

    long seen = 0;
    if (session[0]) {
        char *state = NULL;
        utp_error_t *err = utp_session_state(h->engine, t, session, &state);
        if (err != NULL) {
            utp_error_free(utp_tool_result_set_error(result, utp_error_message(err)));
            utp_error_free(err);
            return 1;
        }
        seen = json_num(state, "count");
        if (seen < 0) seen = 0;
        utp_string_free(state);
        char value[32];
        snprintf(value, sizeof value, "%ld", seen + 1);
        utp_error_free(utp_set_session_state(h->engine, t, session, "count", value));
    }
    snprintf(args, sizeof args, "{\"sku\": \"%s\"}", sku);
    char *stock = NULL;
    utp_error_t *err = utp_call_tool(h->engine, "inv.get", args, NULL, &stock);
    if (err != NULL) {
        utp_error_free(utp_tool_result_set_error(result, utp_error_message(err)));
        utp_error_free(err);
        return 1;
    }
    snprintf(out, sizeof out, "{\"seen_before\": %ld, \"stock\": %ld, \"execution\": \"%s\", \"tenant\": \"%s\"}",
             seen, json_num(stock, "count"), exec, tenant);
    utp_string_free(stock);
    return set_result(result, out);
}

/* proxy {sku}: submits the "restock" intent from inside a handler and returns its outputs.count. */
static int32_t proxy_handler(void *user_data, const char *context_json, const char *params_json,
                             utp_tool_result_t *result) {
    (void)context_json;
    struct handler_state *h = user_data;
    bump(&h->calls);
    char *record = NULL;
    utp_error_t *err = utp_submit_intent(h->engine, "restock", params_json, NULL, NULL, &record);
    if (err != NULL) {
        utp_error_free(utp_tool_result_set_error(result, utp_error_message(err)));
        utp_error_free(err);
        return 1;
    }
    char out[64];
    snprintf(out, sizeof out, "{\"inner\": %ld}", json_num(record, "count"));
    utp_string_free(record);
    return set_result(result, out);
}

/* once: unregisters itself from inside its own call (which must not wait for itself). */
static int32_t once_handler(void *user_data, const char *context_json, const char *params_json,
                            utp_tool_result_t *result) {
    (void)context_json;
    (void)params_json;
    struct handler_state *h = user_data;
    bump(&h->calls);
    bool removed = false;
    utp_error_t *err = utp_unregister_intent(h->engine, "once", &removed);
    int32_t status = err != NULL || !removed;
    utp_error_free(err);
    /* Still running: not finalised yet. */
    if (load(&h->freed) != 0) status = 2;
    if (status == 0) status = set_result(result, "\"bye\"");
    return status;
}

/* gate: blocks until the test opens it. */
struct gate_state {
    int entered;
    int returned;
    int freed;
    int open;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static int32_t gate_handler(void *user_data, const char *context_json, const char *params_json,
                            utp_tool_result_t *result) {
    (void)context_json;
    (void)params_json;
    struct gate_state *g = user_data;
    pthread_mutex_lock(&g->lock);
    bump(&g->entered);
    while (!g->open) pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    int32_t status = set_result(result, "\"through\"");
    bump(&g->returned);
    return status;
}

static void gate_free(void *user_data) { bump(&((struct gate_state *)user_data)->freed); }

static int32_t never_handler(void *user_data, const char *context_json, const char *params_json,
                             utp_tool_result_t *result) {
    (void)user_data;
    (void)context_json;
    (void)params_json;
    (void)result;
    return 0;
}

/* ----------------------------------------------------------------- tests */

struct fixture {
    struct tool_state get, set;
    struct handler_state lookup, proxy, once;
    struct gate_state gate;
    int never_freed;  /* finaliser count of registrations that must be refused */
    int kept_freed;   /* a handler left registered: finalised by utp_engine_free() */
};

static void register_all(utp_engine_t *engine, struct fixture *f) {
    const char *sku = "{\"inputs\": {\"type\": \"object\", \"properties\": {\"sku\": {\"type\": \"string\"}},"
                      " \"required\": [\"sku\"]}}";
    ok(utp_register_tool(engine, "inv.get", sku, get_tool, &f->get, tool_free, NULL), "register inv.get");
    ok(utp_register_tool(engine, "inv.set", NULL, set_tool, &f->set, tool_free, NULL), "register inv.set");
    ok(utp_register_intent_workflow(engine, "restock", RESTOCK), "register restock intent");
    ok(utp_register_intent(engine, "lookup", lookup_handler, &f->lookup, handler_free), "register lookup");
    ok(utp_register_intent(engine, "proxy", proxy_handler, &f->proxy, handler_free), "register proxy");
    ok(utp_register_intent(engine, "kept", never_handler, &f->kept_freed, count_free), "register kept");
}

static void test_workflow_intent(utp_engine_t *engine, struct fixture *f) {
    char *record = NULL;
    if (ok(utp_submit_intent(engine, "restock", "{\"sku\": \"A1\"}", "acme", "s1", &record), "submit restock")) {
        CHECK(find(record, "\"intent\":\"restock\"") >= 0 && find(record, "\"status\":\"completed\"") >= 0, "%s",
              record);
        CHECK(find(record, "\"workflow\":\"restock\"") >= 0 && find(record, "\"tenant\":\"acme\"") >= 0 &&
                  find(record, "\"session_id\":\"s1\"") >= 0,
              "%s", record);
        CHECK(find(record, "\"outputs\":{\"count\":104}") >= 0, "4 + 100 through the steps: %s", record);
        utp_string_free(record);
    }
    CHECK(load(&f->get.calls) == 1 && load(&f->set.calls) == 1, "tools get %d set %d", load(&f->get.calls),
          load(&f->set.calls));

    /* Params the workflow refuses: no record, an error, nothing ran. */
    record = (char *)"sentinel";
    expect_code(utp_submit_intent(engine, "restock", "{\"sku\": 1}", NULL, NULL, &record), UTP_ERR_VALIDATION_FAILED,
                "restock with a numeric sku");
    CHECK(record == NULL, "out reset on error");
    expect_code(utp_submit_intent(engine, "restock", "[1]", NULL, NULL, &record), UTP_ERR_INVALID_ARGUMENT,
                "restock with an array");
    expect_code(utp_submit_intent(engine, "restock", NULL, NULL, NULL, &record), UTP_ERR_VALIDATION_FAILED,
                "restock without params (sku is required)");
    CHECK(load(&f->get.calls) == 1, "nothing ran: %d", load(&f->get.calls));

    /* Registering workflows: invalid ones are refused and leave nothing behind. */
    expect_code(utp_register_intent_workflow(engine, "bad", "{\"name\": \"bad\", \"steps\": [{\"id\": \"x\"}]}"),
                UTP_ERR_VALIDATION_FAILED, "workflow without a tool");
    expect_code(utp_register_intent_workflow(engine, "bad", "/nonexistent/utp/restock.yaml"), UTP_ERR_NOT_FOUND,
                "missing workflow file");
    expect_code(utp_register_intent_workflow(engine, "bad", "   "), UTP_ERR_INVALID_ARGUMENT, "empty workflow");
    expect_code(utp_register_intent_workflow(engine, "restock", RESTOCK), UTP_ERR_ALREADY_EXISTS, "duplicate workflow");
    expect_code(utp_register_intent_workflow(engine, "lookup", RESTOCK), UTP_ERR_ALREADY_EXISTS,
                "workflow over a handler intent");
    expect_code(utp_register_intent_workflow(engine, "  ", RESTOCK), UTP_ERR_INVALID_ARGUMENT, "blank intent type");

    /* A workflow from a file. */
    char path[] = "/tmp/utp_intent_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd >= 0) {
        FILE *file = fdopen(fd, "w");
        fputs("name: fetch\ninputs: {sku: {type: string}}\nsteps:\n  - id: s\n    tool: inv.get\n"
              "    args: {sku: \"${{ inputs.sku }}\"}\noutputs: {n: \"${{ steps.s.output.count }}\"}\n",
              file);
        fclose(file);
        ok(utp_register_intent_workflow(engine, "fetch", path), "register from a file");
        unlink(path);
        if (ok(utp_submit_intent(engine, "fetch", "{\"sku\": \"F\"}", NULL, NULL, &record), "submit fetch")) {
            CHECK(find(record, "\"outputs\":{\"n\":4}") >= 0 && find(record, "\"tenant\":null") >= 0, "%s", record);
            utp_string_free(record);
        }
        bool removed = false;
        ok(utp_unregister_intent(engine, "fetch", &removed), "unregister fetch");
        CHECK(removed, "fetch removed");
    }
}

static void test_handler_intent(utp_engine_t *engine, struct fixture *f) {
    char *record = NULL, *state = NULL;
    int before = load(&f->get.calls);
    if (ok(utp_submit_intent(engine, "lookup", "{\"sku\": \"Q\"}", "acme", "s9", &record), "lookup 1")) {
        char exec[64], inner[64];
        json_str(record, "execution_id", exec, sizeof exec);
        json_str(record, "execution", inner, sizeof inner);
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"error\":null") >= 0, "%s", record);
        CHECK(find(record, "\"seen_before\":0") >= 0 && find(record, "\"stock\":4") >= 0, "%s", record);
        CHECK(exec[0] != '\0' && strcmp(exec, inner) == 0, "the handler saw execution_id '%s' = '%s'", inner, exec);
        CHECK(find(record, "\"intent\":\"lookup\"") >= 0 && find(record, "\"tenant\":\"acme\"") >= 0 &&
                  find(record, "\"session_id\":\"s9\"") >= 0,
              "%s", record);
        utp_string_free(record);
    }
    if (ok(utp_submit_intent(engine, "lookup", "{\"sku\": \"Q\"}", "acme", "s9", &record), "lookup 2")) {
        CHECK(find(record, "\"seen_before\":1") >= 0, "state kept across submits: %s", record);
        utp_string_free(record);
    }
    if (ok(utp_session_state(engine, "acme", "s9", &state), "session state")) {
        CHECK(find(state, "\"count\":2") >= 0, "host sees the handler's state: %s", state);
        utp_string_free(state);
    }
    /* Another tenant's session of the same name is another session. */
    if (ok(utp_submit_intent(engine, "lookup", "{\"sku\": \"Q\"}", "other", "s9", &record), "lookup other tenant")) {
        CHECK(find(record, "\"seen_before\":0") >= 0 && find(record, "\"tenant\":\"other\"") >= 0, "%s", record);
        utp_string_free(record);
    }
    /* No tenant, no session. */
    if (ok(utp_submit_intent(engine, "lookup", "{\"sku\": \"Z\"}", NULL, NULL, &record), "lookup no session")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"tenant\":null") >= 0 &&
                  find(record, "\"session_id\":null") >= 0,
              "%s", record);
        utp_string_free(record);
    }
    CHECK(load(&f->get.calls) == before + 4, "the handler called inv.get: %d", load(&f->get.calls) - before);
    CHECK(load(&f->lookup.calls) == 4 && load(&f->lookup.off_main) == 4, "calls %d, on library threads %d",
          load(&f->lookup.calls), load(&f->lookup.off_main));

    /* A handler's failure is a failed record, not an error. */
    if (ok(utp_submit_intent(engine, "lookup", "{\"fail\": true}", NULL, NULL, &record), "lookup fails")) {
        CHECK(find(record, "\"status\":\"failed\"") >= 0 && find(record, "\"output\":null") >= 0, "%s", record);
        CHECK(find(record, "\"code\":\"TOOL_FAILED\"") >= 0 && find(record, "the handler gave up") >= 0 &&
                  find(record, "lookup") >= 0,
              "%s", record);
        utp_string_free(record);
    }
    if (ok(utp_submit_intent(engine, "lookup", "{\"status\": 7}", NULL, NULL, &record), "lookup status 7")) {
        CHECK(find(record, "\"status\":\"failed\"") >= 0 && find(record, "returned status 7") >= 0, "%s", record);
        utp_string_free(record);
    }

    /* A handler submitting another intent (nested blocking call from the blocking pool). */
    if (ok(utp_submit_intent(engine, "proxy", "{\"sku\": \"P\", \"extra\": 6}", NULL, NULL, &record), "proxy")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"output\":{\"inner\":10}") >= 0, "%s",
              record);
        utp_string_free(record);
    }
    CHECK(load(&f->proxy.calls) == 1, "proxy calls %d", load(&f->proxy.calls));

    char *list = NULL;
    if (ok(utp_intents(engine, &list), "intents")) {
        CHECK(strcmp(list, "[\"kept\",\"lookup\",\"proxy\",\"restock\"]") == 0, "sorted: %s", list);
        utp_string_free(list);
    }
}

static void test_registration_errors(utp_engine_t *engine, struct fixture *f) {
    /* Every refused registration finalises its user_data at once, exactly once. */
    expect_code(utp_register_intent(engine, "lookup", never_handler, &f->never_freed, count_free),
                UTP_ERR_ALREADY_EXISTS, "duplicate handler");
    CHECK(load(&f->never_freed) == 1, "finalised at once: %d", load(&f->never_freed));
    expect_code(utp_register_intent(engine, "restock", never_handler, &f->never_freed, count_free),
                UTP_ERR_ALREADY_EXISTS, "handler over a workflow intent");
    expect_code(utp_register_intent(engine, " ", never_handler, &f->never_freed, count_free),
                UTP_ERR_INVALID_ARGUMENT, "blank type");
    expect_code(utp_register_intent(engine, "x", NULL, &f->never_freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "NULL callback");
    expect_code(utp_register_intent(engine, NULL, never_handler, &f->never_freed, count_free),
                UTP_ERR_INVALID_ARGUMENT, "NULL type");
    expect_code(utp_register_intent(NULL, "x", never_handler, &f->never_freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "NULL engine");
    expect_code(utp_register_intent(engine, "bad\xff", never_handler, &f->never_freed, count_free),
                UTP_ERR_INVALID_ARGUMENT, "type not UTF-8");
    CHECK(load(&f->never_freed) == 7, "each refused registration finalised once: %d", load(&f->never_freed));
    /* No finaliser is fine too. */
    expect_code(utp_register_intent(engine, "lookup", never_handler, NULL, NULL), UTP_ERR_ALREADY_EXISTS,
                "duplicate without finaliser");
    /* The original handler still serves. */
    char *record = NULL;
    if (ok(utp_submit_intent(engine, "lookup", "{\"sku\": \"Q\"}", "acme", "s9", &record), "lookup after refusals")) {
        CHECK(find(record, "\"seen_before\":2") >= 0, "%s", record);
        utp_string_free(record);
    }
    CHECK(load(&f->lookup.freed) == 0, "lookup not finalised: %d", load(&f->lookup.freed));
}

static void test_misuse(utp_engine_t *engine) {
    char *out = (char *)"sentinel";
    bool removed = true;
    expect_code(utp_submit_intent(engine, "nope", "{}", NULL, NULL, &out), UTP_ERR_NOT_FOUND, "unknown intent");
    CHECK(out == NULL, "out reset");
    expect_code(utp_submit_intent(NULL, "lookup", NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL engine");
    expect_code(utp_submit_intent(engine, NULL, NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL type");
    expect_code(utp_submit_intent(engine, "lookup", NULL, NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "NULL out");
    expect_code(utp_submit_intent(engine, "lookup", "{", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "bad JSON");
    expect_code(utp_submit_intent(engine, "look\xc3", "{}", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT,
                "type not UTF-8");
    expect_code(utp_submit_intent(engine, "lookup", "{\"sku\": \"\xff\"}", NULL, NULL, &out),
                UTP_ERR_INVALID_ARGUMENT, "params not UTF-8");
    expect_code(utp_submit_intent(engine, "lookup", "{}", "\xfe", NULL, &out), UTP_ERR_INVALID_ARGUMENT,
                "tenant not UTF-8");
    expect_code(utp_submit_intent(engine, "lookup", "{}", NULL, "\xfe", &out), UTP_ERR_INVALID_ARGUMENT,
                "session not UTF-8");
    CHECK(out == NULL, "out still NULL");

    expect_code(utp_register_intent_workflow(NULL, "w", RESTOCK), UTP_ERR_INVALID_ARGUMENT, "wf NULL engine");
    expect_code(utp_register_intent_workflow(engine, NULL, RESTOCK), UTP_ERR_INVALID_ARGUMENT, "wf NULL type");
    expect_code(utp_register_intent_workflow(engine, "w", NULL), UTP_ERR_INVALID_ARGUMENT, "wf NULL workflow");
    expect_code(utp_register_intent_workflow(engine, "w\xff", RESTOCK), UTP_ERR_INVALID_ARGUMENT, "wf type not UTF-8");
    expect_code(utp_register_intent_workflow(engine, "w", "{\"name\": \"\xff\"}"), UTP_ERR_INVALID_ARGUMENT,
                "wf not UTF-8");

    expect_code(utp_unregister_intent(NULL, "lookup", &removed), UTP_ERR_INVALID_ARGUMENT, "unregister NULL engine");
    CHECK(!removed, "removed reset");
    expect_code(utp_unregister_intent(engine, NULL, &removed), UTP_ERR_INVALID_ARGUMENT, "unregister NULL type");
    expect_code(utp_unregister_intent(engine, "lookup", NULL), UTP_ERR_INVALID_ARGUMENT, "unregister NULL out");
    expect_code(utp_unregister_intent(engine, "\xff", &removed), UTP_ERR_INVALID_ARGUMENT, "unregister not UTF-8");
    ok(utp_unregister_intent(engine, "never-registered", &removed), "unregister unknown");
    CHECK(!removed, "unknown is not removed");

    out = (char *)"sentinel";
    expect_code(utp_intents(NULL, &out), UTP_ERR_INVALID_ARGUMENT, "intents NULL engine");
    CHECK(out == NULL, "intents out reset");
    expect_code(utp_intents(engine, NULL), UTP_ERR_INVALID_ARGUMENT, "intents NULL out");
}

/* ------------------------------------------------- unregister while running */

struct submit_job {
    utp_engine_t *engine;
    const char *intent;
    char params[64];
    char session[32];
    char *record;
    int32_t code; /* 0 = ok */
    int done;
};

static void *submit_thread(void *arg) {
    struct submit_job *job = arg;
    utp_error_t *err =
        utp_submit_intent(job->engine, job->intent, job->params, "t", job->session[0] ? job->session : NULL, &job->record);
    job->code = err ? utp_error_code(err) : 0;
    utp_error_free(err);
    bump(&job->done);
    return NULL;
}

struct unregister_job {
    utp_engine_t *engine;
    bool removed;
    int32_t code;
    int done;
};

static void *unregister_thread(void *arg) {
    struct unregister_job *job = arg;
    utp_error_t *err = utp_unregister_intent(job->engine, "gate", &job->removed);
    job->code = err ? utp_error_code(err) : 0;
    utp_error_free(err);
    bump(&job->done);
    return NULL;
}

static void test_unregister(utp_engine_t *engine, struct fixture *f) {
    /* The handler unregisters itself: no wait on itself, finalised after it returns. */
    ok(utp_register_intent(engine, "once", once_handler, &f->once, handler_free), "register once");
    char *record = NULL;
    if (ok(utp_submit_intent(engine, "once", NULL, NULL, NULL, &record), "submit once")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"output\":\"bye\"") >= 0, "%s", record);
        utp_string_free(record);
    }
    CHECK(wait_at_least(&f->once.freed, 1, 5000) && load(&f->once.freed) == 1, "once finalised %d",
          load(&f->once.freed));
    expect_code(utp_submit_intent(engine, "once", NULL, NULL, NULL, &record), UTP_ERR_NOT_FOUND, "once is gone");

    /* Unregistering from the host while a call runs waits for it, then finalises once. */
    struct gate_state *g = &f->gate;
    ok(utp_register_intent(engine, "gate", gate_handler, g, gate_free), "register gate");
    struct submit_job sub;
    memset(&sub, 0, sizeof sub);
    sub.engine = engine;
    sub.intent = "gate";
    strcpy(sub.params, "{}");
    pthread_t submitter, unregisterer;
    pthread_create(&submitter, NULL, submit_thread, &sub);
    CHECK(wait_at_least(&g->entered, 1, 5000), "gate entered");
    struct unregister_job un;
    memset(&un, 0, sizeof un);
    un.engine = engine;
    pthread_create(&unregisterer, NULL, unregister_thread, &un);
    sleep_ms(150);
    CHECK(load(&un.done) == 0 && load(&g->freed) == 0, "unregister waits for the running call (done %d freed %d)",
          load(&un.done), load(&g->freed));
    /* New requests no longer reach it meanwhile. */
    expect_code(utp_submit_intent(engine, "gate", NULL, NULL, NULL, &record), UTP_ERR_NOT_FOUND, "gate unlisted");
    pthread_mutex_lock(&g->lock);
    g->open = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    pthread_join(unregisterer, NULL);
    CHECK(un.code == 0 && un.removed, "unregister code %d removed %d", (int)un.code, (int)un.removed);
    CHECK(load(&g->returned) == 1 && load(&g->freed) == 1, "finalised after the call returned (returned %d freed %d)",
          load(&g->returned), load(&g->freed));
    pthread_join(submitter, NULL);
    CHECK(sub.code == 0 && find(sub.record, "\"output\":\"through\"") >= 0, "running call completed: %d %s",
          (int)sub.code, sub.record ? sub.record : "(null)");
    utp_string_free(sub.record);

    /* Workflow intents unregister too; a second time is false. */
    bool removed = false;
    ok(utp_unregister_intent(engine, "proxy", &removed), "unregister proxy");
    CHECK(removed && load(&f->proxy.freed) == 1, "proxy removed %d freed %d", (int)removed, load(&f->proxy.freed));
    ok(utp_unregister_intent(engine, "proxy", &removed), "unregister proxy again");
    CHECK(!removed && load(&f->proxy.freed) == 1, "second unregister: removed %d freed %d", (int)removed,
          load(&f->proxy.freed));
    ok(utp_register_intent(engine, "proxy", proxy_handler, &f->proxy, NULL), "re-register proxy (no finaliser)");
    if (ok(utp_submit_intent(engine, "proxy", "{\"sku\": \"R\"}", NULL, NULL, &record), "proxy again")) {
        CHECK(find(record, "\"inner\":104") >= 0, "%s", record);
        utp_string_free(record);
    }
}

static void test_threads(utp_engine_t *engine, struct fixture *f) {
    enum { N = 8 };
    struct submit_job jobs[N];
    pthread_t threads[N];
    int before = load(&f->lookup.calls);
    for (int i = 0; i < N; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].engine = engine;
        jobs[i].intent = (i % 2) ? "lookup" : "restock";
        snprintf(jobs[i].params, sizeof jobs[i].params, "{\"sku\": \"T%d\"}", i);
        snprintf(jobs[i].session, sizeof jobs[i].session, "thread%d", i);
        pthread_create(&threads[i], NULL, submit_thread, &jobs[i]);
    }
    int good = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        if (jobs[i].code == 0 && find(jobs[i].record, "\"status\":\"completed\"") >= 0 &&
            find(jobs[i].record, jobs[i].session) >= 0)
            good++;
        else
            fprintf(stderr, "thread %d: code %d record %s\n", i, (int)jobs[i].code,
                    jobs[i].record ? jobs[i].record : "(null)");
        utp_string_free(jobs[i].record);
    }
    CHECK(good == N, "%d of %d concurrent submits completed", good, N);
    CHECK(load(&f->lookup.calls) == before + N / 2, "lookup calls %d", load(&f->lookup.calls) - before);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    static struct fixture f;
    memset(&f, 0, sizeof f);
    pthread_mutex_init(&f.gate.lock, NULL);
    pthread_cond_init(&f.gate.cond, NULL);

    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine")) return 1;
    f.lookup.engine = f.proxy.engine = f.once.engine = engine;
    f.lookup.main_thread = f.proxy.main_thread = f.once.main_thread = pthread_self();
    register_all(engine, &f);
    test_workflow_intent(engine, &f);
    test_handler_intent(engine, &f);
    test_registration_errors(engine, &f);
    test_misuse(engine);
    test_unregister(engine, &f);
    test_threads(engine, &f);
    CHECK(load(&f.kept_freed) == 0 && load(&f.lookup.freed) == 0, "still registered: not finalised");
    utp_engine_free(engine);

    /* Every finaliser exactly once. */
    CHECK(load(&f.get.freed) == 1 && load(&f.set.freed) == 1, "tool finalisers %d %d", load(&f.get.freed),
          load(&f.set.freed));
    CHECK(load(&f.lookup.freed) == 1 && load(&f.kept_freed) == 1, "freed by utp_engine_free: lookup %d kept %d",
          load(&f.lookup.freed), load(&f.kept_freed));
    CHECK(load(&f.proxy.freed) == 1 && load(&f.once.freed) == 1 && load(&f.gate.freed) == 1,
          "proxy %d once %d gate %d", load(&f.proxy.freed), load(&f.once.freed), load(&f.gate.freed));
    CHECK(load(&f.never_freed) == 7, "refused registrations %d", load(&f.never_freed));
    CHECK(load(&f.gate.entered) == 1 && load(&f.gate.returned) == 1, "gate entered %d returned %d",
          load(&f.gate.entered), load(&f.gate.returned));

    pthread_mutex_destroy(&f.gate.lock);
    pthread_cond_destroy(&f.gate.cond);

    printf("test_intents: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
