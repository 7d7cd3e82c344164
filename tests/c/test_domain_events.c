/*
 * C ABI tests for the domain layer and events: C business rules (utp_add_business_rule,
 * utp_rule_result_*), config rules (permissions, CEL deny_if with business_rules
 * constants), rate limits with retry-after, approvals (fail fast and waiting), the
 * dry run utp_check, event subscribers, utp_events_flush, utp_history, metrics,
 * callbacks that call back into the engine, 16 threads with a C rule installed,
 * misuse, and every finaliser called exactly once.
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static const char *CONFIG =
    "{"
    " \"permissions\": {\"closed\": {\"enabled\": false}, \"shop\": {\"allowed_actions\": [\"buy\"]}},"
    " \"business_rules\": {\"max_qty\": 100},"
    " \"rules\": [{\"name\": \"max_qty\", \"match\": {\"tool\": \"shop\", \"action\": \"buy\"},"
    "             \"deny_if\": \"params.qty > constants.max_qty\","
    "             \"message\": \"at most {{constants.max_qty}} items per order\"}],"
    " \"rate_limits\": [{\"match\": {\"tool\": \"limited\"}, \"per\": \"tenant\", \"limit\": 2, \"window\": \"60s\"}],"
    " \"security\": {\"levels\": {\"vault.open\": \"restricted\"}}"
    "}";

/* ---------------------------------------------------------------- helpers */

static int load(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void bump(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
static void store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

static void sleep_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* Wait up to `ms` for *p == want. */
static int wait_for(const int *p, int want, long ms) {
    for (long waited = 0; waited < ms; waited += 5) {
        if (load(p) == want) return 1;
        sleep_ms(5);
    }
    return load(p) == want;
}

/* Occurrences of `needle` in `hay`. */
static int count(const char *hay, const char *needle) {
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay ? strstr(hay, needle) : NULL; p != NULL; p = strstr(p + len, needle)) n++;
    return n;
}

/* Call a tool; returns the error code (0 on success) and optionally the message (copied). */
static int32_t call(utp_engine_t *engine, const char *tool, const char *args, const char *options, char *message,
                    size_t message_size) {
    char *out = NULL;
    utp_error_t *err = utp_call_tool(engine, tool, args, options, &out);
    int32_t code = err ? utp_error_code(err) : 0;
    if (message != NULL && message_size > 0) {
        snprintf(message, message_size, "%s", err ? utp_error_message(err) : (out ? out : ""));
    }
    utp_error_free(err);
    utp_string_free(out);
    return code;
}

/* A finaliser that counts its calls in the int user_data points to. */
static void count_free(void *user_data) { bump((int *)user_data); }

/* ------------------------------------------------------------------ tools */

/* user_data of the C tools: calls made and finaliser runs. */
struct tool_state {
    int calls;
    int freed;
};

static int32_t ok_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)args_json;
    if (user_data != NULL) bump(&((struct tool_state *)user_data)->calls);
    utp_error_t *err = utp_tool_result_set_json(result, "{\"ok\": true}");
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

static void tool_free(void *user_data) { bump(&((struct tool_state *)user_data)->freed); }

static void register_tools(utp_engine_t *engine, struct tool_state *bets) {
    ok(utp_register_tool(engine, "betfair.placeBet",
                         "{\"inputs\": {\"type\": \"object\", \"properties\": {\"amount\": {\"type\": \"number\"}},"
                         " \"required\": [\"amount\"]}}",
                         ok_tool, bets, tool_free, NULL),
       "register betfair.placeBet");
    const char *others[] = {"betfair.withdraw", "closed.thing", "shop.buy", "shop.sell", "limited.ping",
                            "vault.open",       "reent.target", "reent.inner", "slow.x",  "utf8.x"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        ok(utp_register_tool(engine, others[i], NULL, ok_tool, NULL, NULL, NULL), others[i]);
    }
}

/* ------------------------------------------------------------ the C rule */

/* user_data of the max_bet rule. */
struct rule_state {
    int calls;
    int freed;
    int saw_place_bet; /* got tool "betfair", action "placeBet" and the arguments */
    double limit;
};

/* Reads "amount": N out of compact JSON arguments; -1 when absent. */
static double amount_of(const char *params_json) {
    const char *p = strstr(params_json, "\"amount\":");
    return p ? strtod(p + strlen("\"amount\":"), NULL) : -1.0;
}

/* Denies betfair.placeBet above the limit; escalates betfair.withdraw. */
static void max_bet_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                         utp_rule_result_t *result) {
    struct rule_state *state = user_data;
    bump(&state->calls);
    if (strcmp(tool, "betfair") != 0) return;
    if (strcmp(action, "placeBet") == 0) {
        if (params_json[0] == '{' && amount_of(params_json) >= 0) store(&state->saw_place_bet, 1);
        if (amount_of(params_json) > state->limit) {
            utp_error_free(utp_rule_result_deny(result, "bets above 1000 are not allowed"));
        }
    } else if (strcmp(action, "withdraw") == 0) {
        utp_error_free(utp_rule_result_escalate(result, "withdrawals need a human"));
    }
}

static void rule_free(void *user_data) { bump(&((struct rule_state *)user_data)->freed); }

static void test_c_rule(utp_engine_t *engine, struct rule_state *rule, struct tool_state *bets) {
    ok(utp_add_business_rule(engine, "max_bet", max_bet_rule, rule, rule_free), "add max_bet");
    char message[512];
    int before = load(&bets->calls);
    CHECK(call(engine, "betfair.placeBet", "{\"amount\": 1500}", NULL, message, sizeof message) ==
              UTP_ERR_PERMISSION_DENIED,
          "1500: %s", message);
    CHECK(find(message, "bets above 1000 are not allowed") >= 0 && find(message, "max_bet") >= 0, "reason: %s",
          message);
    CHECK(load(&bets->calls) == before, "the tool ran although denied");
    CHECK(call(engine, "betfair.placeBet", "{\"amount\": 500}", NULL, message, sizeof message) == 0, "500: %s",
          message);
    CHECK(find(message, "\"ok\":true") >= 0, "result %s", message);
    CHECK(load(&bets->calls) == before + 1, "the tool did not run once");
    CHECK(load(&rule->saw_place_bet) == 1, "the rule did not get tool, action and params");

    /* The dry run decides the same and calls nothing. */
    char *decision = NULL;
    if (ok(utp_check(engine, "betfair.placeBet", "{\"amount\": 1500}", NULL, &decision), "check 1500")) {
        CHECK(find(decision, "\"decision\":\"deny\"") >= 0 && find(decision, "bets above 1000") >= 0 &&
                  find(decision, "\"rule\":\"max_bet\"") >= 0,
              "check 1500: %s", decision);
        utp_string_free(decision);
    }
    if (ok(utp_check(engine, "betfair.placeBet", "{\"amount\": 500}", "t1", &decision), "check 500")) {
        CHECK(find(decision, "\"decision\":\"allow\"") >= 0 && find(decision, "\"reason\":null") >= 0,
              "check 500: %s", decision);
        utp_string_free(decision);
    }
    CHECK(load(&bets->calls) == before + 1, "utp_check ran the tool");

    /* A C rule's escalation, refused: the call stays denied. */
    utp_error_t *err = NULL;
    char *out = NULL;
    err = utp_call_tool(engine, "betfair.withdraw", NULL, "{\"fail_fast_on_approval\": true}", &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_APPROVAL_REQUIRED && utp_error_approval_id(err) != NULL &&
              find(utp_error_message(err), "withdrawals need a human") >= 0,
          "withdraw: %s", err ? utp_error_message(err) : "success");
    char id[128] = "";
    if (err != NULL && utp_error_approval_id(err) != NULL) snprintf(id, sizeof id, "%s", utp_error_approval_id(err));
    utp_error_free(err);
    char *approval = NULL;
    if (ok(utp_approve(engine, id, false, "not today", &approval), "refuse withdraw")) {
        CHECK(find(approval, "\"status\":\"denied\"") >= 0 && find(approval, "not today") >= 0, "refused: %s",
              approval);
        utp_string_free(approval);
    }
    char options[256];
    snprintf(options, sizeof options, "{\"approval_id\": \"%s\"}", id);
    CHECK(call(engine, "betfair.withdraw", NULL, options, message, sizeof message) == UTP_ERR_PERMISSION_DENIED,
          "withdraw after refusal: %s", message);
}

/* -------------------------------------------------------- config rules */

static void test_config_rules(utp_engine_t *engine) {
    char message[512];
    CHECK(call(engine, "closed.thing", NULL, NULL, message, sizeof message) == UTP_ERR_PERMISSION_DENIED &&
              find(message, "disabled") >= 0,
          "disabled manual: %s", message);
    CHECK(call(engine, "shop.sell", NULL, NULL, message, sizeof message) == UTP_ERR_PERMISSION_DENIED &&
              find(message, "allowed actions") >= 0,
          "action not allowed: %s", message);
    CHECK(call(engine, "shop.buy", "{\"qty\": 500}", NULL, message, sizeof message) == UTP_ERR_PERMISSION_DENIED &&
              find(message, "at most 100 items per order") >= 0,
          "CEL deny_if: %s", message);
    CHECK(call(engine, "shop.buy", "{\"qty\": 5}", NULL, message, sizeof message) == 0, "CEL allows: %s", message);
    char *decision = NULL;
    if (ok(utp_check(engine, "shop.buy", "{\"qty\": 101}", NULL, &decision), "check shop.buy")) {
        CHECK(find(decision, "\"decision\":\"deny\"") >= 0 && find(decision, "\"rule\":\"max_qty\"") >= 0,
              "check: %s", decision);
        utp_string_free(decision);
    }
}

/* ---------------------------------------------------------- rate limits */

static void test_rate_limit(utp_engine_t *engine) {
    const char *t1 = "{\"tenant\": \"t1\"}";
    char message[512];
    CHECK(call(engine, "limited.ping", NULL, t1, message, sizeof message) == 0, "1st: %s", message);
    CHECK(call(engine, "limited.ping", NULL, t1, message, sizeof message) == 0, "2nd: %s", message);
    char *out = NULL;
    utp_error_t *err = utp_call_tool(engine, "limited.ping", NULL, t1, &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_RATE_LIMITED, "3rd: %s", err ? utp_error_message(err) : "ok");
    int64_t after = utp_error_retry_after_ms(err);
    CHECK(after > 0 && after <= 60000, "retry after %lld ms", (long long)after);
    CHECK(utp_error_approval_id(err) == NULL, "approval id on a rate limit");
    CHECK(find(utp_error_message(err), "retry after") >= 0, "message %s", utp_error_message(err));
    utp_error_free(err);
    CHECK(call(engine, "limited.ping", NULL, "{\"tenant\": \"t2\"}", message, sizeof message) == 0,
          "another tenant: %s", message);
    char *decision = NULL;
    if (ok(utp_check(engine, "limited.ping", NULL, "t1", &decision), "check limited")) {
        CHECK(find(decision, "\"rate_limited\":{") >= 0 && find(decision, "retry_after_ms") >= 0, "check: %s",
              decision);
        utp_string_free(decision);
    }
    /* Other errors carry no retry-after. */
    err = utp_call_tool(engine, "nope.nope", NULL, NULL, &out);
    CHECK(utp_error_retry_after_ms(err) == -1 && utp_error_approval_id(err) == NULL, "not found has extras");
    utp_error_free(err);
}

/* ------------------------------------------------------------ approvals */

struct waiting_call {
    utp_engine_t *engine;
    int32_t code;
};

static void *call_and_wait(void *arg) {
    struct waiting_call *w = arg;
    w->code = call(w->engine, "vault.open", NULL, "{\"timeout\": 20}", NULL, 0);
    return NULL;
}

static void test_approvals(utp_engine_t *engine) {
    char *out = NULL;
    char message[512];
    utp_error_t *err = utp_call_tool(engine, "vault.open", NULL, "{\"fail_fast_on_approval\": true}", &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_APPROVAL_REQUIRED, "fail fast: %s",
          err ? utp_error_message(err) : "ok");
    char id[128] = "";
    if (utp_error_approval_id(err) != NULL) snprintf(id, sizeof id, "%s", utp_error_approval_id(err));
    CHECK(strncmp(id, "apr_", 4) == 0, "approval id '%s'", id);
    CHECK(utp_error_retry_after_ms(err) == -1, "retry-after on an approval");
    utp_error_free(err);

    char *list = NULL;
    if (ok(utp_approvals(engine, true, &list), "pending approvals")) {
        CHECK(find(list, id) >= 0 && find(list, "\"status\":\"pending\"") >= 0 && find(list, "vault.open") >= 0,
              "pending: %s", list);
        utp_string_free(list);
    }
    char options[256];
    snprintf(options, sizeof options, "{\"approval_id\": \"%s\"}", id);
    CHECK(call(engine, "vault.open", NULL, options, message, sizeof message) == UTP_ERR_APPROVAL_REQUIRED,
          "still pending: %s", message);
    char *approval = NULL;
    if (ok(utp_approve(engine, id, true, "looks fine", &approval), "approve")) {
        CHECK(find(approval, "\"status\":\"approved\"") >= 0 && find(approval, id) >= 0, "approved: %s", approval);
        utp_string_free(approval);
    }
    CHECK(call(engine, "vault.open", NULL, options, message, sizeof message) == 0, "approved call: %s", message);
    CHECK(call(engine, "vault.open", NULL, options, message, sizeof message) == UTP_ERR_PERMISSION_DENIED &&
              find(message, "already used") >= 0,
          "approval reused: %s", message);
    expect_code(utp_approve(engine, id, true, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "approve twice");
    expect_code(utp_approve(engine, "apr_nope", true, NULL, NULL), UTP_ERR_NOT_FOUND, "approve unknown");
    if (ok(utp_approvals(engine, true, &list), "pending after approval")) {
        CHECK(find(list, id) < 0, "still listed as pending: %s", list);
        utp_string_free(list);
    }
    if (ok(utp_approvals(engine, false, &list), "all approvals")) {
        CHECK(find(list, id) >= 0 && find(list, "looks fine") >= 0, "all: %s", list);
        utp_string_free(list);
    }

    /* Without fail fast the call waits; another thread approves. */
    struct waiting_call w = {engine, -1};
    pthread_t thread;
    pthread_create(&thread, NULL, call_and_wait, &w);
    char waiting_id[128] = "";
    for (int i = 0; i < 1000 && waiting_id[0] == '\0'; i++) {
        if (utp_approvals(engine, true, &list) == NULL) {
            const char *p = strstr(list, "\"id\":\"");
            if (p != NULL) sscanf(p + 6, "%127[^\"]", waiting_id);
            utp_string_free(list);
        }
        if (waiting_id[0] == '\0') sleep_ms(5);
    }
    CHECK(waiting_id[0] != '\0', "no pending approval for the waiting call");
    ok(utp_approve(engine, waiting_id, true, NULL, NULL), "approve the waiting call");
    pthread_join(thread, NULL);
    CHECK(w.code == 0, "waiting call ended with %d", (int)w.code);
}

/* ---------------------------------------------------------------- events */

/* user_data of a counting subscriber. */
struct counter {
    const char *type; /* the event type every event must have */
    int events;
    int wrong;
    int freed;
};

static void count_event(void *user_data, const char *event_json) {
    struct counter *c = user_data;
    char want[64];
    snprintf(want, sizeof want, "\"type\":\"%s\"", c->type);
    if (event_json[0] != '{' || find(event_json, want) < 0 || find(event_json, "\"id\":") < 0) bump(&c->wrong);
    bump(&c->events);
}

static void counter_free(void *user_data) { bump(&((struct counter *)user_data)->freed); }

static void any_event(void *user_data, const char *event_json) {
    struct counter *c = user_data;
    if (event_json[0] != '{') bump(&c->wrong);
    bump(&c->events);
}

/* A subscriber that is slow, to test that utp_unsubscribe waits for it. */
struct slow_sub {
    int running;
    int events;
    int freed;
};

static void slow_event(void *user_data, const char *event_json) {
    struct slow_sub *s = user_data;
    (void)event_json;
    store(&s->running, 1);
    bump(&s->events);
    sleep_ms(300);
    store(&s->running, 0);
}

static void slow_free(void *user_data) {
    struct slow_sub *s = user_data;
    CHECK(load(&s->running) == 0, "finaliser while the callback runs");
    bump(&s->freed);
}

/* A subscriber that calls back into the engine, then unsubscribes itself. */
struct reentrant_sub {
    utp_engine_t *engine;
    uint64_t id;
    int events;
    int nested_ok;
    int removed;
    int flush_refused;
    int freed;
};

static void reentrant_event(void *user_data, const char *event_json) {
    struct reentrant_sub *s = user_data;
    (void)event_json;
    if (load(&s->events) == 0) {
        bump(&s->events);
        char *out = NULL;
        utp_error_t *err = utp_call_tool(s->engine, "shop.buy", "{\"qty\": 1}", NULL, &out);
        store(&s->nested_ok, err == NULL);
        utp_error_free(err);
        utp_string_free(out);
        bool removed = false;
        err = utp_unsubscribe(s->engine, s->id, &removed);
        store(&s->removed, err == NULL && removed);
        utp_error_free(err);
        bool drained = true;
        err = utp_events_flush(s->engine, 1000, &drained);
        store(&s->flush_refused, err != NULL && utp_error_code(err) == UTP_ERR_INVALID_ARGUMENT && !drained);
        utp_error_free(err);
    } else {
        bump(&s->events);
    }
}

static void reentrant_free(void *user_data) { bump(&((struct reentrant_sub *)user_data)->freed); }

/* Count of events of the history that match `filter`. */
static int history_count(utp_engine_t *engine, const char *filter, const char *type) {
    char *events = NULL;
    if (!ok(utp_history(engine, filter, &events), filter)) return -1;
    int all = count(events, "\"type\":");
    char want[64];
    snprintf(want, sizeof want, "\"type\":\"%s\"", type);
    CHECK(count(events, want) == all, "history %s has other types: %s", filter, events);
    CHECK(events[0] == '[', "history is not an array: %s", events);
    utp_string_free(events);
    return all;
}

static void test_events(utp_engine_t *engine, struct counter *everything) {
    struct counter succeeded = {"tool.succeeded", 0, 0, 0};
    struct counter denied = {"policy.denied", 0, 0, 0};
    uint64_t id_succeeded = 0, id_denied = 0, id_all = 0;
    ok(utp_subscribe(engine, "tool.succeeded", count_event, &succeeded, counter_free, &id_succeeded),
       "subscribe tool.succeeded");
    ok(utp_subscribe(engine, "policy.*", count_event, &denied, counter_free, &id_denied), "subscribe policy.*");
    /* Left subscribed: finalised by utp_engine_free. */
    ok(utp_subscribe(engine, "*", any_event, everything, counter_free, &id_all), "subscribe *");
    CHECK(id_succeeded != 0 && id_denied != 0 && id_succeeded != id_denied, "ids %llu %llu",
          (unsigned long long)id_succeeded, (unsigned long long)id_denied);

    int denied_before = history_count(engine, "{\"type\": \"policy.denied\"}", "policy.denied");
    for (int i = 0; i < 3; i++) call(engine, "betfair.placeBet", "{\"amount\": 10}", NULL, NULL, 0);
    for (int i = 0; i < 2; i++) call(engine, "betfair.placeBet", "{\"amount\": 5000}", NULL, NULL, 0);
    bool drained = false;
    ok(utp_events_flush(engine, 5000, &drained), "flush");
    CHECK(drained, "subscribers not drained");
    CHECK(load(&succeeded.events) == 3 && load(&succeeded.wrong) == 0, "tool.succeeded seen %d (%d wrong)",
          load(&succeeded.events), load(&succeeded.wrong));
    CHECK(load(&denied.events) == 2 && load(&denied.wrong) == 0, "policy.denied seen %d (%d wrong)",
          load(&denied.events), load(&denied.wrong));

    /* History, filtered. */
    int denied_after = history_count(engine, "{\"type\": \"policy.denied\"}", "policy.denied");
    CHECK(denied_after == denied_before + 2, "history policy.denied %d -> %d", denied_before, denied_after);
    CHECK(history_count(engine, "{\"type\": \"tool.succeeded\", \"tool\": \"betfair.placeBet\", \"limit\": 1}",
                        "tool.succeeded") == 1,
          "history limit 1");
    CHECK(history_count(engine, "{\"type\": \"tool.*\", \"tool\": \"no.such\"}", "tool.x") == 0, "history none");
    char *events = NULL;
    if (ok(utp_history(engine, NULL, &events), "history NULL filter")) {
        CHECK(count(events, "\"type\":") > 10 && find(events, "manual.registered") >= 0, "history: %.200s", events);
        utp_string_free(events);
    }
    if (ok(utp_history(engine, "null", &events), "history null filter")) utp_string_free(events);
    expect_code(utp_history(engine, "{\"colour\": 1}", &events), UTP_ERR_INVALID_ARGUMENT, "history unknown key");
    expect_code(utp_history(engine, "[1]", &events), UTP_ERR_INVALID_ARGUMENT, "history array");
    expect_code(utp_history(engine, "{", &events), UTP_ERR_INVALID_ARGUMENT, "history bad JSON");
    expect_code(utp_history(engine, "{\"limit\": \"x\"}", &events), UTP_ERR_INVALID_ARGUMENT, "history bad limit");
    CHECK(events == NULL, "out not reset");

    /* Metrics: the denial counter equals the denials in the history. */
    int bet_denials = history_count(engine, "{\"type\": \"policy.denied\", \"tool\": \"betfair.placeBet\"}",
                                    "policy.denied");
    char *text = NULL;
    if (ok(utp_metrics_text(engine, &text), "metrics_text")) {
        char want[128];
        snprintf(want, sizeof want, "utp_policy_denied_total{tool=\"betfair.placeBet\"} %d\n", bet_denials);
        CHECK(bet_denials >= 3 && find(text, want) >= 0, "metrics text lacks %s", want);
        CHECK(find(text, "utp_rate_limited_total{tool=\"limited.ping\"} 1\n") >= 0, "rate-limited counter");
        CHECK(find(text, "# TYPE utp_tool_calls_total counter") >= 0, "no TYPE line");
        utp_string_free(text);
    }
    char *metrics = NULL;
    if (ok(utp_metrics(engine, &metrics), "metrics")) {
        CHECK(metrics[0] == '{' && find(metrics, "\"betfair.placeBet\"") >= 0, "metrics: %.200s", metrics);
        utp_string_free(metrics);
    }

    /* Unsubscribing finalises at once (from a host thread) and stops the callbacks. */
    bool removed = false;
    ok(utp_unsubscribe(engine, id_succeeded, &removed), "unsubscribe");
    CHECK(removed && load(&succeeded.freed) == 1, "removed %d, freed %d", removed, load(&succeeded.freed));
    ok(utp_unsubscribe(engine, id_succeeded, &removed), "unsubscribe again");
    CHECK(!removed, "removed twice");
    ok(utp_unsubscribe(engine, id_denied, &removed), "unsubscribe policy.*");
    call(engine, "betfair.placeBet", "{\"amount\": 10}", NULL, NULL, 0);
    ok(utp_events_flush(engine, 5000, &drained), "flush after unsubscribe");
    CHECK(load(&succeeded.events) == 3, "callback after unsubscribe");
    CHECK(load(&succeeded.freed) == 1 && load(&denied.freed) == 1, "finalisers %d %d", load(&succeeded.freed),
          load(&denied.freed));

    /* utp_unsubscribe waits for a running callback; the finaliser runs after it. */
    struct slow_sub slow = {0, 0, 0};
    uint64_t id_slow = 0;
    ok(utp_subscribe(engine, "tool.succeeded", slow_event, &slow, slow_free, &id_slow), "subscribe slow");
    call(engine, "shop.buy", "{\"qty\": 1}", NULL, NULL, 0);
    CHECK(wait_for(&slow.running, 1, 5000), "slow callback did not start");
    ok(utp_unsubscribe(engine, id_slow, &removed), "unsubscribe slow");
    CHECK(removed && load(&slow.running) == 0 && load(&slow.freed) == 1, "unsubscribe did not wait: running %d freed %d",
          load(&slow.running), load(&slow.freed));
    call(engine, "shop.buy", "{\"qty\": 1}", NULL, NULL, 0);
    sleep_ms(20);
    CHECK(load(&slow.events) == 1, "slow callback ran %d times", load(&slow.events));

    /* A callback that calls tools, unsubscribes itself and tries to flush. */
    struct reentrant_sub re = {engine, 0, 0, 0, 0, 0, 0};
    ok(utp_subscribe(engine, "tool.succeeded", reentrant_event, &re, reentrant_free, &re.id), "subscribe reentrant");
    call(engine, "shop.buy", "{\"qty\": 2}", NULL, NULL, 0);
    CHECK(wait_for(&re.freed, 1, 5000), "reentrant subscriber not finalised");
    CHECK(load(&re.nested_ok) == 1, "nested call from an event callback failed");
    CHECK(load(&re.removed) == 1, "self-unsubscribe failed");
    CHECK(load(&re.flush_refused) == 1, "flush from a callback was not refused");
    ok(utp_events_flush(engine, 5000, &drained), "flush after reentrant");
    CHECK(load(&re.events) == 1 && load(&re.freed) == 1, "events %d freed %d", load(&re.events), load(&re.freed));
}

/* -------------------------------------------------- reentrant and slow rules */

struct reentrant_rule {
    utp_engine_t *engine;
    int calls;
    int tools_ok;
    int nested_ok;
    int removed;
    int freed_in_callback;
    int freed;
};

/* Acts on reent.target only: lists tools, calls reent.inner, and removes itself when asked. */
static void reentrant_rule_fn(void *user_data, const char *tool, const char *action, const char *params_json,
                              utp_rule_result_t *result) {
    struct reentrant_rule *r = user_data;
    (void)result;
    if (strcmp(tool, "reent") != 0 || strcmp(action, "target") != 0) return;
    bump(&r->calls);
    char *tools = NULL;
    utp_error_t *err = utp_tools(r->engine, &tools);
    if (err == NULL && find(tools, "reent.inner") >= 0) store(&r->tools_ok, 1);
    utp_error_free(err);
    utp_string_free(tools);
    char *out = NULL;
    err = utp_call_tool(r->engine, "reent.inner", NULL, NULL, &out);
    if (err == NULL && find(out, "\"ok\":true") >= 0) store(&r->nested_ok, 1);
    utp_error_free(err);
    utp_string_free(out);
    if (find(params_json, "\"remove\":true") >= 0) {
        bool removed = false;
        err = utp_remove_business_rule(r->engine, "reentrant", &removed);
        store(&r->removed, err == NULL && removed);
        utp_error_free(err);
        /* Still running: the finaliser waits for this call to return. */
        store(&r->freed_in_callback, load(&r->freed));
    }
}

static void reentrant_rule_free(void *user_data) { bump(&((struct reentrant_rule *)user_data)->freed); }

struct slow_rule {
    int running;
    int calls;
    int freed;
};

static void slow_rule_fn(void *user_data, const char *tool, const char *action, const char *params_json,
                         utp_rule_result_t *result) {
    struct slow_rule *s = user_data;
    (void)action;
    (void)params_json;
    if (strcmp(tool, "slow") != 0) return;
    store(&s->running, 1);
    bump(&s->calls);
    sleep_ms(300);
    utp_error_free(utp_rule_result_escalate(result, "slow rule escalates"));
    utp_error_free(utp_rule_result_deny(result, "slow rule denies"));
    store(&s->running, 0);
}

static void slow_rule_free(void *user_data) {
    struct slow_rule *s = user_data;
    CHECK(load(&s->running) == 0, "rule finaliser while the rule runs");
    bump(&s->freed);
}

struct slow_call {
    utp_engine_t *engine;
    int32_t code;
    char message[512];
};

static void *call_slow(void *arg) {
    struct slow_call *c = arg;
    c->code = call(c->engine, "slow.x", NULL, NULL, c->message, sizeof c->message);
    return NULL;
}

/* Records what utp_rule_result_deny says about a reason that is not UTF-8. */
static int bad_reason_code = -1;
static void bad_reason_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                            utp_rule_result_t *result) {
    (void)user_data;
    (void)action;
    (void)params_json;
    if (strcmp(tool, "utf8") != 0) return;
    utp_error_t *err = utp_rule_result_deny(result, "bad \xff reason");
    store(&bad_reason_code, err ? utp_error_code(err) : 0);
    utp_error_free(err);
}

static void test_rule_reentrancy(utp_engine_t *engine) {
    struct reentrant_rule r = {engine, 0, 0, 0, 0, -1, 0};
    ok(utp_add_business_rule(engine, "reentrant", reentrant_rule_fn, &r, reentrant_rule_free), "add reentrant");
    char message[512];
    CHECK(call(engine, "reent.target", "{}", NULL, message, sizeof message) == 0, "reentrant call: %s", message);
    CHECK(load(&r.tools_ok) == 1 && load(&r.nested_ok) == 1, "from the rule: utp_tools %d, nested call %d",
          load(&r.tools_ok), load(&r.nested_ok));
    CHECK(call(engine, "reent.target", "{\"remove\": true}", NULL, message, sizeof message) == 0,
          "self-removing call: %s", message);
    CHECK(load(&r.removed) == 1, "rule did not remove itself");
    CHECK(load(&r.freed_in_callback) == 0, "finalised while its callback ran");
    CHECK(load(&r.freed) == 1, "finalised %d times once its call returned", load(&r.freed));
    CHECK(call(engine, "reent.target", "{}", NULL, message, sizeof message) == 0 && load(&r.calls) == 2,
          "removed rule still called (%d calls)", load(&r.calls));

    /* Removing a rule from a host thread waits for its running call; the call is then allowed or not,
       but the finaliser runs after the callback returned. Deny beats escalate in one rule. */
    struct slow_rule s = {0, 0, 0};
    ok(utp_add_business_rule(engine, "slow", slow_rule_fn, &s, slow_rule_free), "add slow");
    struct slow_call c = {engine, -1, ""};
    pthread_t thread;
    pthread_create(&thread, NULL, call_slow, &c);
    CHECK(wait_for(&s.running, 1, 5000), "slow rule did not start");
    bool removed = false;
    ok(utp_remove_business_rule(engine, "slow", &removed), "remove slow");
    CHECK(removed && load(&s.running) == 0 && load(&s.freed) == 1, "remove did not wait: running %d freed %d",
          load(&s.running), load(&s.freed));
    pthread_join(thread, NULL);
    CHECK(c.code == UTP_ERR_PERMISSION_DENIED && find(c.message, "slow rule denies") >= 0, "slow call: %d %s",
          (int)c.code, c.message);
    ok(utp_remove_business_rule(engine, "slow", &removed), "remove slow again");
    CHECK(!removed, "removed twice");

    /* A reason that is not UTF-8 still denies (fail closed), and the setter says why. */
    int freed = 0;
    ok(utp_add_business_rule(engine, "bad_reason", bad_reason_rule, &freed, count_free), "add bad_reason");
    CHECK(call(engine, "utf8.x", NULL, NULL, message, sizeof message) == UTP_ERR_PERMISSION_DENIED &&
              find(message, "bad ") >= 0,
          "bad reason call: %s", message);
    CHECK(load(&bad_reason_code) == UTP_ERR_INVALID_ARGUMENT, "deny with bad UTF-8 gave %d", load(&bad_reason_code));
    ok(utp_remove_business_rule(engine, "bad_reason", &removed), "remove bad_reason");
    CHECK(removed && freed == 1, "bad_reason finalised %d times", freed);
}

/* --------------------------------------------------------------- threads */

enum { THREADS = 16, ROUNDS = 50 };

static void *bettor(void *arg) {
    utp_engine_t *engine = arg;
    long bad = 0;
    for (int i = 0; i < ROUNDS; i++) {
        int big = i % 2;
        char args[64];
        snprintf(args, sizeof args, "{\"amount\": %d}", big ? 1000 + i : 1000 - i);
        int32_t code = call(engine, "betfair.placeBet", args, "{\"tenant\": \"t\"}", NULL, 0);
        if (code != (big ? UTP_ERR_PERMISSION_DENIED : 0)) bad++;
    }
    return (void *)bad;
}

static void test_threads(utp_engine_t *engine, struct rule_state *rule, struct tool_state *bets) {
    int rule_before = load(&rule->calls), tool_before = load(&bets->calls);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, bettor, engine);
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r = NULL;
        pthread_join(threads[i], &r);
        bad += (long)r;
    }
    CHECK(bad == 0, "%ld calls decided wrongly", bad);
    CHECK(load(&rule->calls) - rule_before == THREADS * ROUNDS, "rule ran %d times", load(&rule->calls) - rule_before);
    CHECK(load(&bets->calls) - tool_before == THREADS * ROUNDS / 2, "tool ran %d times",
          load(&bets->calls) - tool_before);
}

/* ----------------------------------------------------------------- misuse */

static void noop_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                      utp_rule_result_t *result) {
    (void)user_data;
    (void)tool;
    (void)action;
    (void)params_json;
    (void)result;
}

static void noop_event(void *user_data, const char *event_json) {
    (void)user_data;
    (void)event_json;
}

static void test_misuse(utp_engine_t *engine) {
    int freed = 0;
    expect_code(utp_add_business_rule(NULL, "x", noop_rule, &freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "rule NULL engine");
    expect_code(utp_add_business_rule(engine, NULL, noop_rule, &freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "rule NULL name");
    expect_code(utp_add_business_rule(engine, "\xff", noop_rule, &freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "rule invalid UTF-8 name");
    expect_code(utp_add_business_rule(engine, " ", noop_rule, &freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "rule blank name");
    expect_code(utp_add_business_rule(engine, "x", NULL, &freed, count_free), UTP_ERR_INVALID_ARGUMENT,
                "rule NULL callback");
    expect_code(utp_add_business_rule(engine, "max_bet", noop_rule, &freed, count_free), UTP_ERR_ALREADY_EXISTS,
                "rule duplicate name");
    CHECK(freed == 6, "6 refused rules finalised %d times", freed);
    expect_code(utp_add_business_rule(engine, "x", NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "no finaliser");

    bool removed = true;
    expect_code(utp_remove_business_rule(NULL, "x", &removed), UTP_ERR_INVALID_ARGUMENT, "remove NULL engine");
    CHECK(!removed, "out_removed not reset");
    expect_code(utp_remove_business_rule(engine, NULL, &removed), UTP_ERR_INVALID_ARGUMENT, "remove NULL name");
    expect_code(utp_remove_business_rule(engine, "x", NULL), UTP_ERR_INVALID_ARGUMENT, "remove NULL out");
    expect_code(utp_remove_business_rule(engine, "\xc3", &removed), UTP_ERR_INVALID_ARGUMENT, "remove bad UTF-8");
    ok(utp_remove_business_rule(engine, "no_such_rule", &removed), "remove unknown");
    CHECK(!removed, "removed an unknown rule");
    expect_code(utp_rule_result_deny(NULL, "x"), UTP_ERR_INVALID_ARGUMENT, "deny NULL result");
    expect_code(utp_rule_result_escalate(NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "escalate NULL result");

    uint64_t id = 42;
    freed = 0;
    expect_code(utp_subscribe(NULL, "*", noop_event, &freed, count_free, &id), UTP_ERR_INVALID_ARGUMENT,
                "subscribe NULL engine");
    CHECK(id == 0, "out id not reset");
    expect_code(utp_subscribe(engine, NULL, noop_event, &freed, count_free, &id), UTP_ERR_INVALID_ARGUMENT,
                "subscribe NULL pattern");
    expect_code(utp_subscribe(engine, "", noop_event, &freed, count_free, &id), UTP_ERR_INVALID_ARGUMENT,
                "subscribe empty pattern");
    expect_code(utp_subscribe(engine, "tool.\xff", noop_event, &freed, count_free, &id), UTP_ERR_INVALID_ARGUMENT,
                "subscribe bad UTF-8");
    expect_code(utp_subscribe(engine, "*", NULL, &freed, count_free, &id), UTP_ERR_INVALID_ARGUMENT,
                "subscribe NULL callback");
    expect_code(utp_subscribe(engine, "*", noop_event, &freed, count_free, NULL), UTP_ERR_INVALID_ARGUMENT,
                "subscribe NULL out");
    CHECK(freed == 6, "6 refused subscriptions finalised %d times", freed);

    removed = true;
    ok(utp_unsubscribe(engine, 987654321, &removed), "unsubscribe unknown id");
    CHECK(!removed, "unknown id removed");
    ok(utp_unsubscribe(engine, 0, &removed), "unsubscribe id 0");
    CHECK(!removed, "id 0 removed");
    expect_code(utp_unsubscribe(NULL, 1, &removed), UTP_ERR_INVALID_ARGUMENT, "unsubscribe NULL engine");
    expect_code(utp_unsubscribe(engine, 1, NULL), UTP_ERR_INVALID_ARGUMENT, "unsubscribe NULL out");

    bool drained = true;
    expect_code(utp_events_flush(NULL, 10, &drained), UTP_ERR_INVALID_ARGUMENT, "flush NULL engine");
    CHECK(!drained, "drained not reset");
    expect_code(utp_events_flush(engine, 10, NULL), UTP_ERR_INVALID_ARGUMENT, "flush NULL out");
    char *out = NULL;
    expect_code(utp_history(NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "history NULL engine");
    expect_code(utp_history(engine, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "history NULL out");
    expect_code(utp_history(engine, "{\"type\": \"\xff\"}", &out), UTP_ERR_INVALID_ARGUMENT, "history bad UTF-8");

    expect_code(utp_check(NULL, "shop.buy", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "check NULL engine");
    expect_code(utp_check(engine, NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "check NULL tool");
    expect_code(utp_check(engine, "shop.buy", NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "check NULL out");
    expect_code(utp_check(engine, "no.such", NULL, NULL, &out), UTP_ERR_NOT_FOUND, "check unknown tool");
    expect_code(utp_check(engine, "shop.buy", "[1]", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "check args array");
    expect_code(utp_check(engine, "shop.buy", "{", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "check bad JSON");
    expect_code(utp_check(engine, "shop.buy", NULL, "t\xff", &out), UTP_ERR_INVALID_ARGUMENT, "check bad tenant");

    expect_code(utp_approvals(NULL, false, &out), UTP_ERR_INVALID_ARGUMENT, "approvals NULL engine");
    expect_code(utp_approvals(engine, false, NULL), UTP_ERR_INVALID_ARGUMENT, "approvals NULL out");
    out = (char *)"garbage";
    expect_code(utp_approve(engine, NULL, true, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "approve NULL id");
    CHECK(out == NULL, "approve out not reset");
    expect_code(utp_approve(NULL, "apr_x", true, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "approve NULL engine");
    expect_code(utp_approve(engine, "apr_x", true, "\xff", NULL), UTP_ERR_INVALID_ARGUMENT, "approve bad reason");
    expect_code(utp_metrics(NULL, &out), UTP_ERR_INVALID_ARGUMENT, "metrics NULL engine");
    expect_code(utp_metrics(engine, NULL), UTP_ERR_INVALID_ARGUMENT, "metrics NULL out");
    expect_code(utp_metrics_text(NULL, &out), UTP_ERR_INVALID_ARGUMENT, "metrics_text NULL engine");
    expect_code(utp_metrics_text(engine, NULL), UTP_ERR_INVALID_ARGUMENT, "metrics_text NULL out");

    CHECK(utp_error_retry_after_ms(NULL) == -1, "retry_after of NULL");
    CHECK(utp_error_approval_id(NULL) == NULL, "approval_id of NULL");
    char message[256];
    CHECK(call(engine, "betfair.placeBet", "{\"amount\": 1}", "{\"fail_fast_on_approval\": 1}", message,
               sizeof message) == UTP_ERR_INVALID_ARGUMENT,
          "fail_fast_on_approval not a bool: %s", message);
}

/* ------------------------------------------------------------------- main */

int main(void) {
    struct tool_state bets = {0, 0};
    struct rule_state rule = {0, 0, 0, 1000.0};
    struct counter everything = {"*", 0, 0, 0};
    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new(CONFIG, &engine), "engine_new")) {
        register_tools(engine, &bets);
        test_c_rule(engine, &rule, &bets);
        test_config_rules(engine);
        test_rate_limit(engine);
        test_approvals(engine);
        test_events(engine, &everything);
        test_rule_reentrancy(engine);
        test_threads(engine, &rule, &bets);
        test_misuse(engine);
        /* Still registered: finalised by utp_engine_free, not before. */
        CHECK(rule.freed == 0 && bets.freed == 0 && everything.freed == 0, "finalised early: rule %d tool %d sub %d",
              rule.freed, bets.freed, everything.freed);
        bool drained = false;
        ok(utp_events_flush(engine, 5000, &drained), "final flush");
        CHECK(load(&everything.events) > 50 && load(&everything.wrong) == 0, "\"*\" saw %d events (%d wrong)",
              load(&everything.events), load(&everything.wrong));
        utp_engine_free(engine);
    }
    CHECK(rule.freed == 1, "rule finalised %d times", rule.freed);
    CHECK(bets.freed == 1, "tool finalised %d times", bets.freed);
    CHECK(everything.freed == 1, "subscription finalised %d times", everything.freed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
