/*
 * UTP Runtime from C: discover the example manuals, add C native tools, a C business
 * rule that denies a call, an event subscriber that prints what happens, and a
 * workflow over the C tools.
 *
 *   cc -std=c11 -Iinclude examples/c/demo.c -Ltarget/debug -lutp -pthread
 *   ./a.out examples/manuals
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utp.h"

/* Print an error, free it, and report whether there was one. */
static int failed(utp_error_t *err, const char *what) {
    if (err == NULL) return 0;
    fprintf(stderr, "%s: error %d: %s\n", what, (int)utp_error_code(err), utp_error_message(err));
    utp_error_free(err);
    return 1;
}

/* The number after "key": in compact JSON (0 if absent). */
static double number(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = strstr(json, pattern);
    return p ? strtod(p + strlen(pattern), NULL) : 0.0;
}

static int32_t reply(utp_tool_result_t *result, const char *json) {
    utp_error_t *err = utp_tool_result_set_json(result, json);
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

/* demo.price {sku} -> {"price": 12.5} */
static int32_t price_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    return reply(result, "{\"price\": 12.5}");
}

/* demo.total {price, qty} -> {"total": price * qty} */
static int32_t total_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    char out[64];
    snprintf(out, sizeof out, "{\"total\": %.2f}", number(args_json, "price") * number(args_json, "qty"));
    return reply(result, out);
}

/* demo.charge {amount} -> {"charged": amount} */
static int32_t charge_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    char out[64];
    snprintf(out, sizeof out, "{\"charged\": %.2f}", number(args_json, "amount"));
    return reply(result, out);
}

/* Business rule: no charge above 100. */
static void max_charge(void *user_data, const char *tool, const char *action, const char *params_json,
                       utp_rule_result_t *result) {
    (void)user_data;
    if (strcmp(tool, "demo") == 0 && strcmp(action, "charge") == 0 && number(params_json, "amount") > 100) {
        utp_error_free(utp_rule_result_deny(result, "charges above 100 need a human"));
    }
}

/* Events arrive on a library thread: print a few types, with the step or tool. */
static void on_event(void *user_data, const char *event_json) {
    (void)user_data;
    char type[40] = "", what[64] = "";
    const char *p = strstr(event_json, "\"type\":\"");
    if (p) sscanf(p + 8, "%39[^\"]", type);
    p = strstr(event_json, "\"step_id\":\"");
    if (p) sscanf(p + 11, "%63[^\"]", what);
    else if ((p = strstr(event_json, "\"workflow\":\"")) != NULL) sscanf(p + 12, "%63[^\"]", what);
    else if ((p = strstr(event_json, "\"tool\":\"")) != NULL) sscanf(p + 8, "%63[^\"]", what);
    if (strncmp(type, "workflow.", 9) == 0 || strcmp(type, "step.completed") == 0 ||
        strcmp(type, "policy.denied") == 0)
        printf("  event %-18s %s\n", type, what);
}

static const char *WORKFLOW =
    "name: order\n"
    "inputs: {sku: {type: string}, qty: {type: integer}}\n"
    "steps:\n"
    "  - {id: price, tool: demo.price, args: {sku: \"${{ inputs.sku }}\"}}\n"
    "  - {id: total, tool: demo.total, depends_on: [price],\n"
    "     args: {price: \"${{ steps.price.output.price }}\", qty: \"${{ inputs.qty }}\"}}\n"
    "  - {id: charge, tool: demo.charge, depends_on: [total], args: {amount: \"${{ steps.total.output.total }}\"}}\n"
    "outputs: {charged: \"${{ steps.charge.output.charged }}\"}\n";

int main(int argc, char **argv) {
    const char *manuals = argc > 1 ? argv[1] : "examples/manuals";
    utp_engine_t *engine = NULL;
    char *json = NULL;
    bool drained = false;
    if (failed(utp_engine_new("{}", &engine), "engine")) return 1;
    printf("utp %s\n", utp_version());

    if (failed(utp_discover(engine, manuals, &json), "discover")) goto fail;
    int registered = 0;
    for (const char *p = strstr(json, "\"registered\""); p; p = strstr(p + 1, "\"registered\"")) registered++;
    printf("discovered %d manuals in %s\n", registered, manuals);
    utp_string_free(json);

    const char *spec = "{\"description\": \"demo tool written in C\"}";
    if (failed(utp_register_tool(engine, "demo.price", spec, price_tool, NULL, NULL, NULL), "tool") ||
        failed(utp_register_tool(engine, "demo.total", spec, total_tool, NULL, NULL, NULL), "tool") ||
        failed(utp_register_tool(engine, "demo.charge", spec, charge_tool, NULL, NULL, NULL), "tool") ||
        failed(utp_add_business_rule(engine, "max_charge", max_charge, NULL, NULL), "rule"))
        goto fail;
    uint64_t subscription = 0;
    if (failed(utp_subscribe(engine, "*", on_event, NULL, NULL, &subscription), "subscribe")) goto fail;

    printf("call demo.charge {\"amount\": 500}\n");
    utp_error_t *err = utp_call_tool(engine, "demo.charge", "{\"amount\": 500}", NULL, &json);
    utp_events_flush(engine, 2000, &drained);
    printf("  -> %s\n", err ? utp_error_message(err) : json);
    utp_error_free(err);
    utp_string_free(json);

    printf("run workflow 'order' {\"sku\": \"A1\", \"qty\": 3}\n");
    if (failed(utp_run_workflow(engine, WORKFLOW, "{\"sku\": \"A1\", \"qty\": 3}", NULL, &json), "run")) goto fail;
    utp_events_flush(engine, 2000, &drained);
    char status[32] = "";
    const char *p = strstr(json, "\"status\":\"");
    if (p) sscanf(p + 10, "%31[^\"]", status);
    printf("  -> %s, charged %.2f\n", status, number(json, "charged"));
    utp_string_free(json);

    utp_engine_free(engine);
    return strcmp(status, "completed") == 0 ? 0 : 1;
fail:
    utp_engine_free(engine);
    return 1;
}
