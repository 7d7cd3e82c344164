/*
 * C ABI tests for workflows (docs/design.md §7): a 3-step workflow over C native tools with
 * data flowing between steps, a C business rule denying a step that a fallback
 * handles, an event subscriber counting step.completed, run / start / wait /
 * execution / executions, suspend / resume, wait timeouts, cancelling a run whose C
 * tool hangs (the tool blocks on a condition variable released after the cancel),
 * a workflow timeout, the asynchronous run with a completion callback (called
 * exactly once, on a library thread, then its finaliser; also when the engine is
 * freed first), session state, concurrent runs from 8 threads, misuse (NULLs,
 * invalid UTF-8, bad JSON, unknown execution ids, invalid workflows), and every
 * finaliser called exactly once.
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

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

/* Wait up to `ms` for *p >= want. */
static int wait_at_least(const int *p, int want, long ms) {
    for (long waited = 0; waited < ms; waited += 5) {
        if (load(p) >= want) return 1;
        sleep_ms(5);
    }
    return load(p) >= want;
}

static void count_free(void *user_data) { bump((int *)user_data); }

/* ------------------------------------------------------------------ tools */

/* user_data of a C tool: calls, finaliser runs, the last arguments seen. */
struct tool_state {
    int calls;
    int freed;
    pthread_mutex_t lock;
    char last_args[256];
};

static void tool_free(void *user_data) { bump(&((struct tool_state *)user_data)->freed); }

static int32_t set_result(utp_tool_result_t *result, const char *json) {
    utp_error_t *err = utp_tool_result_set_json(result, json);
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

static void seen(struct tool_state *state, const char *args_json) {
    bump(&state->calls);
    pthread_mutex_lock(&state->lock);
    snprintf(state->last_args, sizeof state->last_args, "%s", args_json);
    pthread_mutex_unlock(&state->lock);
}

/* inv.get {sku} -> {"sku": sku, "count": 4} */
static int32_t get_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    seen(user_data, args_json);
    char sku[64], out[160];
    json_str(args_json, "sku", sku, sizeof sku);
    snprintf(out, sizeof out, "{\"sku\": \"%s\", \"count\": 4}", sku);
    return set_result(result, out);
}

/* inv.set {sku, count} -> {"sku": sku, "count": count} */
static int32_t set_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    seen(user_data, args_json);
    char sku[64], out[160];
    json_str(args_json, "sku", sku, sizeof sku);
    snprintf(out, sizeof out, "{\"sku\": \"%s\", \"count\": %ld}", sku, json_num(args_json, "count"));
    return set_result(result, out);
}

/* inv.queue {sku} -> {"queued": true} */
static int32_t queue_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    seen(user_data, args_json);
    return set_result(result, "{\"queued\": true}");
}

/* inv.log {sku, update} -> {"logged": true}; its arguments show what the steps passed on. */
static int32_t log_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    seen(user_data, args_json);
    return set_result(result, "{\"logged\": true}");
}

/* slow.hang: blocks until the test releases it. */
struct hang_state {
    int entered;
    int returned;
    int freed;
    int released;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static int32_t hang_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)args_json;
    struct hang_state *h = user_data;
    pthread_mutex_lock(&h->lock);
    bump(&h->entered);
    while (!h->released) pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
    int32_t status = set_result(result, "\"finally\"");
    bump(&h->returned);
    return status;
}

static void hang_free(void *user_data) { bump(&((struct hang_state *)user_data)->freed); }

static void release(struct hang_state *h) {
    pthread_mutex_lock(&h->lock);
    h->released = 1;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

/* slow.nap: sleeps 300 ms. */
static int32_t nap_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)args_json;
    bump(user_data);
    sleep_ms(300);
    return set_result(result, "1");
}

/* ------------------------------------------------------- rule, subscriber */

struct rule_state {
    int calls;
    int denied;
    int freed;
};

/* Denies inv.set above 500 items. */
static void max_count_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                           utp_rule_result_t *result) {
    struct rule_state *rule = user_data;
    bump(&rule->calls);
    if (strcmp(tool, "inv") == 0 && strcmp(action, "set") == 0 && json_num(params_json, "count") > 500) {
        bump(&rule->denied);
        utp_error_free(utp_rule_result_deny(result, "counts above 500 need a manual review"));
    }
}

static void rule_free(void *user_data) { bump(&((struct rule_state *)user_data)->freed); }

struct sub_state {
    int completed;
    int bad;
    int freed;
};

static void on_step_completed(void *user_data, const char *event_json) {
    struct sub_state *sub = user_data;
    if (strstr(event_json, "\"type\":\"step.completed\"") != NULL && strstr(event_json, "\"step_id\":") != NULL) {
        bump(&sub->completed);
    } else {
        bump(&sub->bad);
    }
}

static void sub_free(void *user_data) { bump(&((struct sub_state *)user_data)->freed); }

/* -------------------------------------------------------------- workflows */

static const char *RESTOCK =
    "{\"name\": \"restock\","
    " \"inputs\": {\"sku\": {\"type\": \"string\"}, \"extra\": {\"type\": \"integer\", \"default\": 100}},"
    " \"steps\": ["
    "  {\"id\": \"stock\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"${{ inputs.sku }}\"}},"
    "  {\"id\": \"update\", \"tool\": \"inv.set\", \"depends_on\": [\"stock\"],"
    "   \"args\": {\"sku\": \"${{ inputs.sku }}\", \"count\": \"${{ steps.stock.output.count + inputs.extra }}\"},"
    "   \"on_error\": {\"fallback\": {\"tool\": \"inv.queue\", \"args\": {\"sku\": \"${{ inputs.sku }}\"}}}},"
    "  {\"id\": \"log\", \"tool\": \"inv.log\", \"depends_on\": [\"update\"],"
    "   \"args\": {\"sku\": \"sku ${{ inputs.sku }}\", \"update\": \"${{ steps.update.output }}\"}}"
    " ],"
    " \"outputs\": {\"label\": \"restocked ${{ inputs.sku }}\", \"result\": \"${{ steps.update.output }}\"}}";

/* The same, as YAML. */
static const char *RESTOCK_YAML =
    "name: restock_yaml\n"
    "inputs: {sku: {type: string}}\n"
    "steps:\n"
    "  - id: stock\n"
    "    tool: inv.get\n"
    "    args: {sku: \"${{ inputs.sku }}\"}\n"
    "  - id: update\n"
    "    tool: inv.set\n"
    "    depends_on: [stock]\n"
    "    args: {sku: \"${{ inputs.sku }}\", count: \"${{ steps.stock.output.count * 2 }}\"}\n"
    "outputs: {count: \"${{ steps.update.output.count }}\"}\n";

static const char *HANG = "{\"name\": \"hang\", \"steps\": [{\"id\": \"h\", \"tool\": \"slow.hang\", \"timeout\": \"30s\"}]}";
static const char *NAP = "{\"name\": \"nap\", \"steps\": [{\"id\": \"n\", \"tool\": \"slow.nap\"}]}";

struct fixture {
    struct tool_state get, set, queue, log;
    struct hang_state hang;
    struct rule_state rule;
    struct sub_state sub;
};

static void register_all(utp_engine_t *engine, struct fixture *f) {
    const char *sku = "{\"inputs\": {\"type\": \"object\", \"properties\": {\"sku\": {\"type\": \"string\"}},"
                      " \"required\": [\"sku\"]}}";
    const char *set = "{\"inputs\": {\"type\": \"object\", \"properties\": {\"sku\": {\"type\": \"string\"},"
                      " \"count\": {\"type\": \"integer\", \"minimum\": 0}}, \"required\": [\"sku\", \"count\"]},"
                      " \"description\": \"Set the stock count\"}";
    ok(utp_register_tool(engine, "inv.get", sku, get_tool, &f->get, tool_free, NULL), "register inv.get");
    ok(utp_register_tool(engine, "inv.set", set, set_tool, &f->set, tool_free, NULL), "register inv.set");
    ok(utp_register_tool(engine, "inv.queue", sku, queue_tool, &f->queue, tool_free, NULL), "register inv.queue");
    ok(utp_register_tool(engine, "inv.log", NULL, log_tool, &f->log, tool_free, NULL), "register inv.log");
    ok(utp_register_tool(engine, "slow.hang", NULL, hang_tool, &f->hang, hang_free, NULL), "register slow.hang");
}

/* ------------------------------------------------------------ run, rules */

static void test_run(utp_engine_t *engine, struct fixture *f) {
    uint64_t sub_id = 0;
    ok(utp_subscribe(engine, "step.completed", on_step_completed, &f->sub, sub_free, &sub_id), "subscribe");

    char *record = NULL;
    if (ok(utp_run_workflow(engine, RESTOCK, "{\"sku\": \"A1\"}", NULL, &record), "run restock")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0, "status: %s", record);
        CHECK(find(record, "\"workflow\":\"restock\"") >= 0 && find(record, "\"execution_id\":\"") >= 0, "%s",
              record);
        /* stock -> update: 4 + 100 as a number; update -> log: the whole object. */
        CHECK(find(record, "\"result\":{\"count\":104,\"sku\":\"A1\"}") >= 0 ||
                  find(record, "\"result\":{\"sku\":\"A1\",\"count\":104}") >= 0,
              "outputs: %s", record);
        CHECK(find(record, "\"label\":\"restocked A1\"") >= 0, "label: %s", record);
        CHECK(find(record, "\"inputs\":{\"extra\":100,\"sku\":\"A1\"}") >= 0 ||
                  find(record, "\"inputs\":{\"sku\":\"A1\",\"extra\":100}") >= 0,
              "defaults filled in: %s", record);
        utp_string_free(record);
    }
    CHECK(load(&f->get.calls) == 1 && load(&f->set.calls) == 1 && load(&f->log.calls) == 1 &&
              load(&f->queue.calls) == 0,
          "calls get %d set %d log %d queue %d", load(&f->get.calls), load(&f->set.calls), load(&f->log.calls),
          load(&f->queue.calls));
    CHECK(find(f->set.last_args, "\"count\":104") >= 0, "inv.set got %s", f->set.last_args);
    CHECK(find(f->log.last_args, "\"sku\":\"sku A1\"") >= 0 && find(f->log.last_args, "\"count\":104") >= 0,
          "inv.log got %s", f->log.last_args);

    bool drained = false;
    ok(utp_events_flush(engine, 5000, &drained), "flush");
    CHECK(drained && load(&f->sub.completed) == 3 && load(&f->sub.bad) == 0, "step.completed seen %d (bad %d)",
          load(&f->sub.completed), load(&f->sub.bad));

    /* The C rule denies inv.set above 500: the fallback queues the update instead. */
    ok(utp_add_business_rule(engine, "max_count", max_count_rule, &f->rule, rule_free), "add rule");
    if (ok(utp_run_workflow(engine, RESTOCK, "{\"sku\": \"B2\", \"extra\": 1000}", NULL, &record), "run denied")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0, "status: %s", record);
        CHECK(find(record, "\"result\":{\"queued\":true}") >= 0, "fallback output: %s", record);
        CHECK(find(record, "PERMISSION_DENIED") >= 0, "the step notes the denial: %s", record);
        utp_string_free(record);
    }
    CHECK(load(&f->rule.denied) == 1, "rule denied %d", load(&f->rule.denied));
    CHECK(load(&f->set.calls) == 1 && load(&f->queue.calls) == 1, "set %d queue %d", load(&f->set.calls),
          load(&f->queue.calls));
    CHECK(find(f->log.last_args, "\"queued\":true") >= 0, "inv.log got %s", f->log.last_args);
    ok(utp_events_flush(engine, 5000, &drained), "flush");
    CHECK(load(&f->sub.completed) == 6, "step.completed seen %d", load(&f->sub.completed));

    /* YAML text, and a file path. */
    if (ok(utp_run_workflow(engine, RESTOCK_YAML, "{\"sku\": \"Y\"}", "", &record), "run yaml")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"outputs\":{\"count\":8}") >= 0,
              "yaml: %s", record);
        utp_string_free(record);
    }
    char path[] = "/tmp/utp_wf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd >= 0) {
        FILE *file = fdopen(fd, "w");
        fputs(RESTOCK_YAML, file);
        fclose(file);
        if (ok(utp_run_workflow(engine, path, "{\"sku\": \"F\"}", NULL, &record), "run file")) {
            CHECK(find(record, "\"workflow\":\"restock_yaml\"") >= 0 && find(record, "\"status\":\"completed\"") >= 0,
                  "file: %s", record);
            utp_string_free(record);
        }
        unlink(path);
    }
    bool removed = false;
    ok(utp_unsubscribe(engine, sub_id, &removed), "unsubscribe");
    CHECK(removed && load(&f->sub.freed) == 1, "subscription finalised %d", load(&f->sub.freed));
}

/* ------------------------------------------- start, wait, list, session */

static void test_start_wait_list(utp_engine_t *engine) {
    char *id = NULL, *record = NULL;
    if (!ok(utp_start_workflow(engine, RESTOCK, "{\"sku\": \"S\"}", "{\"tenant\": \"acme\", \"session\": \"s1\"}",
                               &id),
            "start"))
        return;
    CHECK(strncmp(id, "exe", 3) == 0 || strlen(id) > 0, "id %s", id);
    if (ok(utp_wait_execution(engine, id, 10000, &record), "wait")) {
        char got[128];
        CHECK(strcmp(json_str(record, "execution_id", got, sizeof got), id) == 0, "id %s vs %s", got, id);
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"session_id\":\"s1\"") >= 0 &&
                  find(record, "\"tenant\":\"acme\"") >= 0,
              "waited: %s", record);
        utp_string_free(record);
    }
    if (ok(utp_execution(engine, id, &record), "execution")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0 && find(record, "\"output\":") >= 0, "execution: %s",
              record);
        utp_string_free(record);
    }
    /* A finished execution: wait returns at once, cancel is a no-op. */
    if (ok(utp_wait_execution(engine, id, 0, &record), "wait forever on a finished run")) utp_string_free(record);
    bool done = true;
    ok(utp_cancel(engine, id, &done), "cancel finished");
    CHECK(!done, "cancelling a finished run reports false");

    char *list = NULL;
    if (ok(utp_executions(engine, "completed", NULL, &list), "executions completed")) {
        CHECK(find(list, id) >= 0 && list[0] == '[', "listed: %.200s", list);
        CHECK(find(list, "\"output\":") < 0, "listings leave step outputs out");
        utp_string_free(list);
    }
    if (ok(utp_executions(engine, NULL, "s1", &list), "executions of s1")) {
        CHECK(find(list, id) >= 0 && find(list, "restock_yaml") < 0, "session s1: %.300s", list);
        utp_string_free(list);
    }
    if (ok(utp_executions(engine, "cancelled", "nobody", &list), "executions none")) {
        CHECK(strcmp(list, "[]") == 0, "none: %s", list);
        utp_string_free(list);
    }
    expect_code(utp_executions(engine, "bogus", NULL, &list), UTP_ERR_INVALID_ARGUMENT, "bogus status");
    CHECK(list == NULL, "out reset");
    utp_string_free(id);
}

static void test_session_state(utp_engine_t *engine) {
    const char *wf = "{\"name\": \"st\", \"steps\": [{\"id\": \"stock\", \"tool\": \"inv.get\","
                     " \"args\": {\"sku\": \"${{ has(state.last) ? state.last : state.greeting }}\"},"
                     " \"set_state\": {\"last\": \"${{ steps.stock.output.sku + '!' }}\"}}]}";
    const char *opts = "{\"tenant\": \"acme\", \"session\": \"chat\", \"user\": \"ann\", \"timeout\": 10}";
    char *state = NULL, *record = NULL;
    ok(utp_set_session_state(engine, "acme", "chat", "greeting", "\"hi\""), "set greeting");
    ok(utp_set_session_state(engine, "acme", "chat", "n", "{\"deep\": [1, 2]}"), "set n");
    if (ok(utp_session_state(engine, "acme", "chat", &state), "state")) {
        CHECK(find(state, "\"greeting\":\"hi\"") >= 0 && find(state, "\"n\":{\"deep\":[1,2]}") >= 0, "state %s",
              state);
        utp_string_free(state);
    }
    if (ok(utp_run_workflow(engine, wf, NULL, opts, &record), "run with state")) {
        CHECK(find(record, "\"sku\":\"hi\"") >= 0 && find(record, "\"status\":\"completed\"") >= 0, "first: %s",
              record);
        utp_string_free(record);
    }
    if (ok(utp_run_workflow(engine, wf, "null", opts, &record), "run with state again")) {
        CHECK(find(record, "\"sku\":\"hi!\"") >= 0, "second read set_state: %s", record);
        utp_string_free(record);
    }
    if (ok(utp_session_state(engine, "acme", "chat", &state), "state after")) {
        CHECK(find(state, "\"last\":\"hi!!\"") >= 0, "state %s", state);
        utp_string_free(state);
    }
    ok(utp_set_session_state(engine, "acme", "chat", "n", "null"), "remove n");
    if (ok(utp_session_state(engine, "acme", "chat", &state), "state removed")) {
        CHECK(find(state, "\"n\"") < 0, "null removes: %s", state);
        utp_string_free(state);
    }
    if (ok(utp_session_state(engine, NULL, "chat", &state), "other tenant")) {
        CHECK(strcmp(state, "{}") == 0, "state is per (tenant, session): %s", state);
        utp_string_free(state);
    }
}

/* --------------------------------------------- suspend, cancel, timeouts */

static void test_cancel_hanging_tool(utp_engine_t *engine, struct fixture *f) {
    char *id = NULL, *record = NULL;
    if (!ok(utp_start_workflow(engine, HANG, NULL, NULL, &id), "start hang")) return;
    CHECK(wait_at_least(&f->hang.entered, 1, 5000), "the C tool did not start");

    expect_code(utp_wait_execution(engine, id, 50, &record), UTP_ERR_TIMEOUT, "wait 50 ms on a hanging run");
    CHECK(record == NULL, "out reset");
    if (ok(utp_execution(engine, id, &record), "execution while running")) {
        CHECK(find(record, "\"status\":\"running\"") >= 0, "running: %s", record);
        utp_string_free(record);
    }
    if (ok(utp_executions(engine, "running", NULL, &record), "executions running")) {
        CHECK(find(record, id) >= 0, "running listed: %s", record);
        utp_string_free(record);
    }
    bool done = false;
    ok(utp_suspend(engine, id, &done), "suspend");
    CHECK(done, "suspend reports true");
    ok(utp_suspend(engine, id, &done), "suspend again");
    CHECK(!done, "suspending twice reports false");
    if (ok(utp_execution(engine, id, &record), "execution suspended")) {
        CHECK(find(record, "\"status\":\"suspended\"") >= 0, "suspended: %s", record);
        utp_string_free(record);
    }
    ok(utp_resume(engine, id, &done), "resume");
    CHECK(done, "resume reports true");
    ok(utp_resume(engine, id, &done), "resume again");
    CHECK(!done, "resuming a running run reports false");

    double started = now_ms();
    ok(utp_cancel(engine, id, &done), "cancel");
    CHECK(done, "cancel reports true");
    if (ok(utp_wait_execution(engine, id, 5000, &record), "wait cancelled")) {
        double took = now_ms() - started;
        CHECK(find(record, "\"status\":\"cancelled\"") >= 0 && find(record, "CANCELLED") >= 0, "cancelled: %s",
              record);
        CHECK(took < 2000, "cancel took %.0f ms", took);
        utp_string_free(record);
    }
    CHECK(load(&f->hang.returned) == 0, "the C tool is still blocked (not interrupted)");
    ok(utp_cancel(engine, id, &done), "cancel again");
    CHECK(!done, "cancelling a cancelled run reports false");

    /* A run's timeout (options) cancels the hanging call and fails the run with TIMEOUT. */
    started = now_ms();
    if (ok(utp_run_workflow(engine, HANG, NULL, "{\"timeout\": 0.2}", &record), "run with timeout")) {
        CHECK(find(record, "\"status\":\"failed\"") >= 0 && find(record, "\"code\":\"TIMEOUT\"") >= 0, "timeout: %s",
              record);
        CHECK(now_ms() - started < 3000, "timeout took %.0f ms", now_ms() - started);
        utp_string_free(record);
    }
    CHECK(load(&f->hang.entered) == 2, "entered %d", load(&f->hang.entered));

    /* Release the blocked C threads: both calls return (nothing stays blocked). */
    release(&f->hang);
    CHECK(wait_at_least(&f->hang.returned, 2, 5000), "returned %d", load(&f->hang.returned));
    if (ok(utp_execution(engine, id, &record), "execution after release")) {
        CHECK(find(record, "\"status\":\"cancelled\"") >= 0 && find(record, "finally") < 0,
              "a late result does not change a cancelled run: %s", record);
        utp_string_free(record);
    }
    utp_string_free(id);
}

/* ------------------------------------------------------------------ async */

struct completion {
    pthread_t caller;
    int calls;
    int errors;
    int on_caller_thread;
    int calls_when_freed;
    int freed;
    int32_t error_code;
    char id[128];
    char status[32];
};

static void on_done(void *user_data, const utp_error_t *error, const char *result_json) {
    struct completion *c = user_data;
    if (pthread_equal(pthread_self(), c->caller)) bump(&c->on_caller_thread);
    if (error != NULL) {
        c->error_code = utp_error_code(error);
        bump(&c->errors);
    } else {
        json_str(result_json, "execution_id", c->id, sizeof c->id);
        json_str(result_json, "status", c->status, sizeof c->status);
    }
    bump(&c->calls);
}

static void done_free(void *user_data) {
    struct completion *c = user_data;
    c->calls_when_freed = load(&c->calls);
    bump(&c->freed);
}

/* A completion that runs another workflow from the library thread. */
struct nested {
    utp_engine_t *engine;
    int ok;
    int freed;
};

static void on_done_nested(void *user_data, const utp_error_t *error, const char *result_json) {
    struct nested *n = user_data;
    (void)result_json;
    char *record = NULL;
    utp_error_t *err = utp_run_workflow(n->engine, RESTOCK, "{\"sku\": \"N\"}", NULL, &record);
    if (error == NULL && err == NULL && strstr(record, "\"status\":\"completed\"") != NULL) n->ok = 1;
    utp_error_free(err);
    utp_string_free(record);
}

static void nested_free(void *user_data) { bump(&((struct nested *)user_data)->freed); }

static void test_async(utp_engine_t *engine) {
    struct completion c = {0};
    c.caller = pthread_self();
    char *id = NULL;
    if (ok(utp_run_workflow_async(engine, RESTOCK, "{\"sku\": \"Z\"}", NULL, on_done, &c, done_free, &id),
           "run async")) {
        CHECK(wait_at_least(&c.freed, 1, 10000), "the finaliser did not run");
        CHECK(load(&c.calls) == 1 && c.calls_when_freed == 1 && load(&c.errors) == 0,
              "callback %d times (%d before the finaliser), errors %d", load(&c.calls), c.calls_when_freed,
              load(&c.errors));
        CHECK(load(&c.on_caller_thread) == 0, "the callback ran on the calling thread");
        CHECK(id != NULL && strcmp(c.id, id) == 0 && strcmp(c.status, "completed") == 0, "id %s / %s, status %s",
              c.id, id ? id : "(null)", c.status);
        sleep_ms(50);
        CHECK(load(&c.calls) == 1 && load(&c.freed) == 1, "called again");
        utp_string_free(id);
    }

    /* Without an id out-parameter, and a callback that calls back into the engine. */
    struct nested n = {engine, 0, 0};
    if (ok(utp_run_workflow_async(engine, RESTOCK, "{\"sku\": \"M\"}", NULL, on_done_nested, &n, nested_free, NULL),
           "run async nested")) {
        CHECK(wait_at_least(&n.freed, 1, 10000) && n.ok, "nested run from the completion: ok %d freed %d", n.ok,
              load(&n.freed));
    }

    /* Failures to start: no callback, the finaliser at once, id reset. */
    struct completion bad = {0};
    bad.caller = pthread_self();
    id = (char *)"stale";
    utp_error_t *err = utp_run_workflow_async(engine, "{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.nope\"}]}",
                                              NULL, NULL, on_done, &bad, done_free, &id);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_VALIDATION_FAILED &&
              find(utp_error_message(err), "inv.nope") >= 0,
          "invalid async: %s", err ? utp_error_message(err) : "success");
    utp_error_free(err);
    CHECK(id == NULL && load(&bad.freed) == 1 && load(&bad.calls) == 0, "bad start: id %p freed %d calls %d",
          (void *)id, load(&bad.freed), load(&bad.calls));
    expect_code(utp_run_workflow_async(engine, RESTOCK, NULL, NULL, NULL, &bad, done_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "NULL callback");
    CHECK(load(&bad.freed) == 2 && load(&bad.calls) == 0, "NULL callback finalised %d", load(&bad.freed));
    expect_code(utp_run_workflow_async(NULL, RESTOCK, NULL, NULL, on_done, &bad, done_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "NULL engine async");
    expect_code(utp_run_workflow_async(engine, RESTOCK, "{", NULL, on_done, &bad, done_free, NULL),
                UTP_ERR_INVALID_ARGUMENT, "bad inputs async");
    expect_code(utp_run_workflow_async(engine, RESTOCK, NULL, NULL, on_done, &bad, NULL, NULL),
                UTP_ERR_VALIDATION_FAILED, "missing input async, no finaliser");
    CHECK(load(&bad.freed) == 4 && load(&bad.calls) == 0, "finalised %d calls %d", load(&bad.freed),
          load(&bad.calls));
}

/* An engine freed while an async run is going: the callback still comes, once, with CANCELLED. */
static void test_async_engine_freed(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine 2")) return;
    int nap_calls = 0; /* calls, then +1 from the finaliser */
    ok(utp_register_tool(engine, "slow.nap", NULL, nap_tool, &nap_calls, count_free, NULL), "register nap");
    struct completion c = {0};
    c.caller = pthread_self();
    ok(utp_run_workflow_async(engine, NAP, NULL, NULL, on_done, &c, done_free, NULL), "async nap");
    CHECK(wait_at_least(&nap_calls, 1, 5000), "nap did not start");
    utp_engine_free(engine);
    CHECK(load(&c.calls) == 1 && load(&c.freed) == 1 && c.calls_when_freed == 1, "calls %d freed %d",
          load(&c.calls), load(&c.freed));
    CHECK(load(&c.errors) == 1 && c.error_code == UTP_ERR_CANCELLED,
          "errors %d code %d status %s", load(&c.errors), (int)c.error_code, c.status);
    CHECK(load(&nap_calls) == 2, "nap called and finalised: %d", load(&nap_calls));
}

/* --------------------------------------------------------------- threads */

#define THREADS 8

static void *runner(void *arg) {
    utp_engine_t *engine = arg;
    long good = 0;
    for (int i = 0; i < 2; i++) {
        char inputs[64], *record = NULL;
        snprintf(inputs, sizeof inputs, "{\"sku\": \"T%d\"}", i);
        utp_error_t *err = utp_run_workflow(engine, RESTOCK, inputs, NULL, &record);
        if (err == NULL && strstr(record, "\"status\":\"completed\"") != NULL) good++;
        utp_error_free(err);
        utp_string_free(record);
    }
    return (void *)good;
}

static void test_threads(utp_engine_t *engine) {
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, runner, engine);
    long total = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r = NULL;
        pthread_join(threads[i], &r);
        total += (long)r;
    }
    CHECK(total == THREADS * 2, "%ld of %d concurrent runs completed", total, THREADS * 2);
}

/* ----------------------------------------------------------------- misuse */

static void test_misuse(utp_engine_t *engine) {
    char *out = (char *)"stale";
    bool done = true;
    const char bad_utf8[] = {'\xff', '\xfe', '\0'};
    char bad_json_utf8[] = "{\"sku\": \"\xc3\x28\"}";

    /* NULLs. */
    expect_code(utp_run_workflow(NULL, RESTOCK, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL engine");
    CHECK(out == NULL, "out reset");
    expect_code(utp_run_workflow(engine, NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "NULL workflow");
    expect_code(utp_run_workflow(engine, RESTOCK, NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "NULL out");
    expect_code(utp_run_workflow(engine, "   ", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "empty workflow");
    expect_code(utp_start_workflow(engine, RESTOCK, "{\"sku\": \"x\"}", NULL, NULL), UTP_ERR_INVALID_ARGUMENT,
                "start NULL out");
    expect_code(utp_start_workflow(NULL, RESTOCK, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "start NULL engine");
    expect_code(utp_execution(engine, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "execution NULL id");
    expect_code(utp_execution(engine, "exe_x", NULL), UTP_ERR_INVALID_ARGUMENT, "execution NULL out");
    expect_code(utp_executions(NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "executions NULL engine");
    expect_code(utp_wait_execution(engine, NULL, 0, &out), UTP_ERR_INVALID_ARGUMENT, "wait NULL id");
    expect_code(utp_cancel(engine, NULL, &done), UTP_ERR_INVALID_ARGUMENT, "cancel NULL id");
    CHECK(!done, "out_done reset");
    expect_code(utp_cancel(engine, "exe_x", NULL), UTP_ERR_INVALID_ARGUMENT, "cancel NULL out");
    expect_code(utp_suspend(NULL, "exe_x", &done), UTP_ERR_INVALID_ARGUMENT, "suspend NULL engine");
    expect_code(utp_resume(engine, NULL, &done), UTP_ERR_INVALID_ARGUMENT, "resume NULL id");
    expect_code(utp_session_state(engine, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "state NULL session");
    expect_code(utp_session_state(engine, NULL, "s", NULL), UTP_ERR_INVALID_ARGUMENT, "state NULL out");
    expect_code(utp_set_session_state(engine, NULL, "s", NULL, "1"), UTP_ERR_INVALID_ARGUMENT, "set NULL key");
    expect_code(utp_set_session_state(engine, NULL, "s", "k", NULL), UTP_ERR_INVALID_ARGUMENT, "set NULL value");
    expect_code(utp_set_session_state(engine, NULL, NULL, "k", "1"), UTP_ERR_INVALID_ARGUMENT, "set NULL session");
    expect_code(utp_set_session_state(engine, NULL, "s", "", "1"), UTP_ERR_INVALID_ARGUMENT, "set empty key");
    expect_code(utp_set_session_state(NULL, NULL, "s", "k", "1"), UTP_ERR_INVALID_ARGUMENT, "set NULL engine");

    /* Invalid UTF-8. */
    expect_code(utp_run_workflow(engine, bad_utf8, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "utf8 workflow");
    expect_code(utp_run_workflow(engine, RESTOCK, bad_json_utf8, NULL, &out), UTP_ERR_INVALID_ARGUMENT,
                "utf8 inputs");
    expect_code(utp_run_workflow(engine, RESTOCK, NULL, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "utf8 options");
    expect_code(utp_execution(engine, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "utf8 id");
    expect_code(utp_executions(engine, bad_utf8, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "utf8 status");
    expect_code(utp_executions(engine, NULL, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "utf8 session filter");
    expect_code(utp_cancel(engine, bad_utf8, &done), UTP_ERR_INVALID_ARGUMENT, "utf8 cancel");
    expect_code(utp_session_state(engine, bad_utf8, "s", &out), UTP_ERR_INVALID_ARGUMENT, "utf8 tenant");
    expect_code(utp_set_session_state(engine, NULL, "s", bad_utf8, "1"), UTP_ERR_INVALID_ARGUMENT, "utf8 key");

    /* Bad JSON and bad options. */
    expect_code(utp_run_workflow(engine, RESTOCK, "{\"sku\": ", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "bad inputs");
    expect_code(utp_run_workflow(engine, RESTOCK, "[1]", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "array inputs");
    expect_code(utp_run_workflow(engine, RESTOCK, NULL, "{", &out), UTP_ERR_INVALID_ARGUMENT, "bad options");
    expect_code(utp_run_workflow(engine, RESTOCK, NULL, "[]", &out), UTP_ERR_INVALID_ARGUMENT, "array options");
    utp_error_t *err = utp_run_workflow(engine, RESTOCK, "{\"sku\": \"x\"}", "{\"tenat\": \"a\"}", &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_INVALID_ARGUMENT && find(utp_error_message(err), "tenat") >= 0,
          "unknown option: %s", err ? utp_error_message(err) : "success");
    utp_error_free(err);
    expect_code(utp_run_workflow(engine, RESTOCK, "{\"sku\": \"x\"}", "{\"timeout\": -1}", &out),
                UTP_ERR_INVALID_ARGUMENT, "negative timeout");
    expect_code(utp_run_workflow(engine, RESTOCK, "{\"sku\": \"x\"}", "{\"session\": 5}", &out),
                UTP_ERR_INVALID_ARGUMENT, "session not a string");
    expect_code(utp_set_session_state(engine, NULL, "s", "k", "{nope"), UTP_ERR_INVALID_ARGUMENT, "bad value");
    expect_code(utp_run_workflow(engine, "{\"name\": ", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT,
                "workflow not JSON");

    /* Unknown execution ids. */
    expect_code(utp_execution(engine, "exe_nope", &out), UTP_ERR_NOT_FOUND, "execution unknown");
    expect_code(utp_wait_execution(engine, "exe_nope", 10, &out), UTP_ERR_NOT_FOUND, "wait unknown");
    expect_code(utp_cancel(engine, "exe_nope", &done), UTP_ERR_NOT_FOUND, "cancel unknown");
    expect_code(utp_suspend(engine, "exe_nope", &done), UTP_ERR_NOT_FOUND, "suspend unknown");
    expect_code(utp_resume(engine, "exe_nope", &done), UTP_ERR_NOT_FOUND, "resume unknown");

    /* Invalid workflows: VALIDATION_FAILED naming the problem; nothing runs. */
    struct {
        const char *workflow;
        const char *inputs;
        const char *needle;
    } cases[] = {
        {"{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.nope\"}]}", NULL, "no tool named 'inv.nope'"},
        {"{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"1\"}, "
         "\"depends_on\": [\"b\"]}, {\"id\": \"b\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"1\"}, "
         "\"depends_on\": [\"a\"]}]}",
         NULL, "cycle"},
        {"{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"1\"}}, "
         "{\"id\": \"a\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"1\"}}]}",
         NULL, "two steps have the id 'a'"},
        {"{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.set\", \"args\": {\"sku\": \"1\", "
         "\"count\": -5}}]}",
         NULL, "count"},
        {"{\"name\": \"x\", \"steps\": [{\"id\": \"a\", \"tool\": \"inv.get\", \"args\": {\"sku\": \"${{ inputs.sku + "
         "}}\"}}]}",
         NULL, "steps.a.args.sku"},
        {"{\"name\": \"x\", \"steps\": []}", NULL, "at least one step"},
        {RESTOCK, "{\"sku\": 5}", "inputs"},
        {RESTOCK, NULL, "sku"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err = utp_run_workflow(engine, cases[i].workflow, cases[i].inputs, NULL, &out);
        CHECK(err != NULL && utp_error_code(err) == UTP_ERR_VALIDATION_FAILED &&
                  find(utp_error_message(err), cases[i].needle) >= 0,
              "case %zu: expected VALIDATION_FAILED naming '%s', got %d: %s", i, cases[i].needle,
              err ? (int)utp_error_code(err) : 0, err ? utp_error_message(err) : "success");
        CHECK(out == NULL, "out reset");
        utp_error_free(err);
        err = utp_start_workflow(engine, cases[i].workflow, cases[i].inputs, NULL, &out);
        CHECK(err != NULL && utp_error_code(err) == UTP_ERR_VALIDATION_FAILED, "start case %zu", i);
        utp_error_free(err);
    }
    expect_code(utp_run_workflow(engine, "/nonexistent/wf.yaml", NULL, NULL, &out), UTP_ERR_NOT_FOUND,
                "missing file");
}

/* ------------------------------------------------------------------- main */

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    static struct fixture f;
    memset(&f, 0, sizeof f);
    pthread_mutex_init(&f.get.lock, NULL);
    pthread_mutex_init(&f.set.lock, NULL);
    pthread_mutex_init(&f.queue.lock, NULL);
    pthread_mutex_init(&f.log.lock, NULL);
    pthread_mutex_init(&f.hang.lock, NULL);
    pthread_cond_init(&f.hang.cond, NULL);

    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine")) return 1;
    register_all(engine, &f);
    test_run(engine, &f);
    test_start_wait_list(engine);
    test_session_state(engine);
    test_cancel_hanging_tool(engine, &f);
    test_async(engine);
    test_threads(engine);
    test_misuse(engine);
    utp_engine_free(engine);

    /* Every finaliser exactly once. */
    CHECK(load(&f.get.freed) == 1 && load(&f.set.freed) == 1 && load(&f.queue.freed) == 1 && load(&f.log.freed) == 1,
          "tool finalisers %d %d %d %d", load(&f.get.freed), load(&f.set.freed), load(&f.queue.freed),
          load(&f.log.freed));
    CHECK(load(&f.hang.freed) == 1, "hang finalised %d", load(&f.hang.freed));
    CHECK(load(&f.hang.entered) == 2 && load(&f.hang.returned) == 2, "hang entered %d returned %d",
          load(&f.hang.entered), load(&f.hang.returned));
    CHECK(load(&f.rule.freed) == 1 && load(&f.sub.freed) == 1, "rule %d subscription %d", load(&f.rule.freed),
          load(&f.sub.freed));

    test_async_engine_freed();

    pthread_mutex_destroy(&f.get.lock);
    pthread_mutex_destroy(&f.set.lock);
    pthread_mutex_destroy(&f.queue.lock);
    pthread_mutex_destroy(&f.log.lock);
    pthread_mutex_destroy(&f.hang.lock);
    pthread_cond_destroy(&f.hang.cond);

    printf("test_workflows: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
