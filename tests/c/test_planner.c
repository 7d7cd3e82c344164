/*
 * C ABI tests for the planner (docs/design.md §10): utp_plan() with the offline planner over
 * two C native tools whose output field feeds the next tool's input (geo.cityOfIp ->
 * weather.forecast), utp_run() planning and running that chain (with inputs, and
 * with a value written in the request), UTP_ERR_PLANNER for a request the offline
 * planner cannot map and for an engine without tools, options (session, tenant,
 * inputs), and misuse: NULL pointers, invalid UTF-8, bad JSON, empty requests,
 * unknown options; out-parameters reset on failure; every finaliser called once.
 * (The HTTP model path is covered by the Python and Node tests.)
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static const char *REQUEST = "weather forecast for the city of an IP address";

struct tool_state {
    int calls;
    int freed;
};

static void bump(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
static int load(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

static void tool_free(void *user_data) { bump(&((struct tool_state *)user_data)->freed); }

static int32_t set_result(utp_tool_result_t *result, const char *json) {
    utp_error_t *err = utp_tool_result_set_json(result, json);
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

/* geo.cityOfIp {ip} -> {"city": ...} */
static int32_t city_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    bump(&((struct tool_state *)user_data)->calls);
    char ip[64];
    json_str(args_json, "ip", ip, sizeof ip);
    return set_result(result, strcmp(ip, "8.8.8.8") == 0 ? "{\"city\": \"Mountain View\"}" : "{\"city\": \"Paris\"}");
}

/* weather.forecast {city} -> {"city": city, "temp_c": 21.5} */
static int32_t forecast_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    bump(&((struct tool_state *)user_data)->calls);
    char city[64], out[160];
    json_str(args_json, "city", city, sizeof city);
    snprintf(out, sizeof out, "{\"city\": \"%s\", \"temp_c\": 21.5}", city);
    return set_result(result, out);
}

static const char *CITY_SPEC =
    "{\"inputs\": {\"type\": \"object\", \"properties\": {\"ip\": {\"type\": \"string\", \"description\": \"IPv4 "
    "address\"}}, \"required\": [\"ip\"]},"
    " \"outputs\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}},"
    " \"description\": \"Find which city an IP address is located in\"}";

static const char *FORECAST_SPEC =
    "{\"inputs\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": "
    "\"integer\"}}, \"required\": [\"city\"]},"
    " \"outputs\": {\"type\": \"object\", \"properties\": {\"temp_c\": {\"type\": \"number\"}}},"
    " \"description\": \"Weather forecast for a city\", \"tags\": [\"weather\"]}";

static void test_plan(utp_engine_t *engine) {
    char *plan = NULL;
    if (ok(utp_plan(engine, REQUEST, NULL, &plan), "offline plan")) {
        char buf[128];
        CHECK(strcmp(json_str(plan, "provider", buf, sizeof buf), "offline") == 0, "provider: %s", plan);
        CHECK(find(plan, "\"model\":\"\"") >= 0, "model: %s", plan);
        CHECK(find(plan, "\"rounds\":0") >= 0, "rounds: %s", plan);
        CHECK(find(plan, "\"total_tokens\":0") >= 0, "usage: %s", plan);
        long city = find(plan, "\"tool\":\"geo.cityOfIp\"");
        long forecast = find(plan, "\"tool\":\"weather.forecast\"");
        CHECK(city >= 0 && forecast > city, "two steps in order: %s", plan);
        CHECK(find(plan, "${{ inputs.ip }}") >= 0, "ip from the inputs: %s", plan);
        CHECK(find(plan, "${{ steps.cityOfIp.output.city }}") >= 0, "city from the first step: %s", plan);
        CHECK(find(plan, "\"depends_on\":[\"cityOfIp\"]") >= 0, "depends_on: %s", plan);

        /* The definition is a valid workflow: run it as written. */
        const char *start = strstr(plan, "\"definition\":");
        const char *end = strstr(plan, ",\"provider\":");
        if (start != NULL && end != NULL && end > start) {
            start += strlen("\"definition\":");
            size_t n = (size_t)(end - start);
            char *definition = malloc(n + 1);
            memcpy(definition, start, n);
            definition[n] = '\0';
            char *record = NULL;
            if (ok(utp_run_workflow(engine, definition, "{\"ip\": \"8.8.8.8\"}", NULL, &record), "run the plan")) {
                CHECK(find(record, "\"status\":\"completed\"") >= 0, "completed: %s", record);
                CHECK(find(record, "Mountain View") >= 0, "output: %s", record);
                utp_string_free(record);
            }
            free(definition);
        } else {
            CHECK(0, "plan keys in the expected order: %s", plan);
        }
        utp_string_free(plan);
    }

    plan = NULL;
    if (ok(utp_plan(engine, REQUEST, "{\"session\": \"s1\", \"tenant\": \"t1\", \"inputs\": {\"ip\": \"1.2.3.4\"}}", &plan),
           "plan with options")) {
        CHECK(find(plan, "${{ inputs.ip }}") >= 0, "caller input used: %s", plan);
        utp_string_free(plan);
    }
    char *events = NULL;
    if (ok(utp_history(engine, "{\"type\": \"workflow.planned\"}", &events), "history")) {
        CHECK(count_of(events, "\"type\":\"workflow.planned\"") == 2, "two workflow.planned: %s", events);
        CHECK(find(events, "\"session_id\":\"s1\"") >= 0 && find(events, "\"tenant\":\"t1\"") >= 0, "context: %s",
              events);
        utp_string_free(events);
    }
    /* Empty / null options are no options. */
    plan = NULL;
    if (ok(utp_plan(engine, REQUEST, "", &plan), "empty options")) utp_string_free(plan);
    plan = NULL;
    if (ok(utp_plan(engine, REQUEST, "null", &plan), "null options")) utp_string_free(plan);
}

static void test_run(utp_engine_t *engine, struct tool_state *city, struct tool_state *forecast) {
    int city_before = load(&city->calls), forecast_before = load(&forecast->calls);
    char *record = NULL;
    if (ok(utp_run(engine, REQUEST, "{\"ip\": \"8.8.8.8\"}", "{\"session\": \"s1\", \"timeout\": 30}", &record),
           "run")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0, "completed: %s", record);
        CHECK(find(record, "\"result\":{\"city\":\"Mountain View\",\"temp_c\":21.5}") >= 0, "outputs: %s", record);
        CHECK(find(record, "\"session_id\":\"s1\"") >= 0, "session: %s", record);
        CHECK(find(record, "\"plan\":{") >= 0 && find(record, "\"provider\":\"offline\"") >= 0, "plan: %s", record);
        utp_string_free(record);
    }
    CHECK(load(&city->calls) == city_before + 1 && load(&forecast->calls) == forecast_before + 1, "each tool once");

    /* A value written in the request: no inputs needed. */
    record = NULL;
    if (ok(utp_run(engine, "find the city of ip=1.2.3.4 then get the weather forecast", NULL, NULL, &record),
           "run with a literal")) {
        CHECK(find(record, "\"status\":\"completed\"") >= 0, "completed: %s", record);
        CHECK(find(record, "\"city\":\"Paris\"") >= 0, "Paris: %s", record);
        utp_string_free(record);
    }
}

static void test_planner_errors(utp_engine_t *engine) {
    char *out = (char *)"untouched";
    utp_error_t *err = utp_plan(engine, "book a flight to Lisbon", NULL, &out);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_PLANNER, "PLANNER code");
    CHECK(out == NULL, "out reset on failure");
    if (err != NULL) {
        CHECK(find(utp_error_message(err), "A model is needed") >= 0, "message: %s", utp_error_message(err));
        CHECK(find(utp_error_message(err), "Lisbon") >= 0, "names the request: %s", utp_error_message(err));
    }
    utp_error_free(err);
    out = (char *)"untouched";
    expect_code(utp_run(engine, "book a flight to Lisbon", NULL, NULL, &out), UTP_ERR_PLANNER, "run: PLANNER");
    CHECK(out == NULL, "run: out reset on failure");

    utp_engine_t *empty = NULL;
    if (ok(utp_engine_new("{\"planner\": {\"provider\": \"offline\"}}", &empty), "empty engine")) {
        err = utp_plan(empty, "weather", NULL, &out);
        CHECK(err != NULL && utp_error_code(err) == UTP_ERR_PLANNER &&
                  find(utp_error_message(err), "no tools are registered") >= 0,
              "no tools: %s", err ? utp_error_message(err) : "success");
        utp_error_free(err);
        utp_engine_free(empty);
    }
}

static void test_misuse(utp_engine_t *engine) {
    char *out = NULL;
    const char bad_utf8[] = {'w', 'e', (char)0xff, 'x', 0};
    /* utp_plan */
    expect_code(utp_plan(NULL, REQUEST, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: NULL engine");
    expect_code(utp_plan(engine, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: NULL request");
    expect_code(utp_plan(engine, REQUEST, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "plan: NULL out");
    expect_code(utp_plan(engine, "", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: empty request");
    expect_code(utp_plan(engine, "  \n", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: blank request");
    expect_code(utp_plan(engine, bad_utf8, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: bad UTF-8 request");
    expect_code(utp_plan(engine, REQUEST, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "plan: bad UTF-8 options");
    expect_code(utp_plan(engine, REQUEST, "{nope", &out), UTP_ERR_INVALID_ARGUMENT, "plan: bad JSON options");
    expect_code(utp_plan(engine, REQUEST, "[1]", &out), UTP_ERR_INVALID_ARGUMENT, "plan: options not an object");
    expect_code(utp_plan(engine, REQUEST, "{\"sesion\": \"s\"}", &out), UTP_ERR_INVALID_ARGUMENT,
                "plan: unknown option");
    expect_code(utp_plan(engine, REQUEST, "{\"session\": 3}", &out), UTP_ERR_INVALID_ARGUMENT,
                "plan: session not a string");
    expect_code(utp_plan(engine, REQUEST, "{\"inputs\": [1]}", &out), UTP_ERR_INVALID_ARGUMENT,
                "plan: inputs not an object");
    size_t big = 20000;
    char *huge = malloc(big + 1);
    memset(huge, 'w', big);
    huge[big] = '\0';
    expect_code(utp_plan(engine, huge, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "plan: request too long");
    free(huge);
    /* utp_run */
    expect_code(utp_run(NULL, REQUEST, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: NULL engine");
    expect_code(utp_run(engine, NULL, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: NULL request");
    expect_code(utp_run(engine, REQUEST, NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "run: NULL out");
    expect_code(utp_run(engine, "", NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: empty request");
    expect_code(utp_run(engine, bad_utf8, NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: bad UTF-8 request");
    expect_code(utp_run(engine, REQUEST, bad_utf8, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: bad UTF-8 inputs");
    expect_code(utp_run(engine, REQUEST, "{nope", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: bad JSON inputs");
    expect_code(utp_run(engine, REQUEST, "[1]", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "run: inputs not an object");
    expect_code(utp_run(engine, REQUEST, NULL, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "run: bad UTF-8 options");
    expect_code(utp_run(engine, REQUEST, NULL, "{nope", &out), UTP_ERR_INVALID_ARGUMENT, "run: bad JSON options");
    expect_code(utp_run(engine, REQUEST, NULL, "{\"timeout\": -1}", &out), UTP_ERR_INVALID_ARGUMENT,
                "run: negative timeout");
    expect_code(utp_run(engine, REQUEST, NULL, "{\"inputs\": {}}", &out), UTP_ERR_INVALID_ARGUMENT,
                "run: unknown option");
    /* Inputs the plan's workflow refuses (ip must be a string). */
    expect_code(utp_run(engine, REQUEST, "{\"ip\": 8}", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                "run: inputs that do not validate");
    CHECK(out == NULL, "out stays NULL after failures");
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    static struct tool_state city, forecast;
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine")) return 1;
    ok(utp_register_tool(engine, "geo.cityOfIp", CITY_SPEC, city_tool, &city, tool_free, NULL), "register city");
    ok(utp_register_tool(engine, "weather.forecast", FORECAST_SPEC, forecast_tool, &forecast, tool_free, NULL),
       "register forecast");
    test_plan(engine);
    test_run(engine, &city, &forecast);
    test_planner_errors(engine);
    test_misuse(engine);
    utp_engine_free(engine);
    CHECK(load(&city.freed) == 1 && load(&forecast.freed) == 1, "finalisers %d %d", load(&city.freed),
          load(&forecast.freed));

    printf("test_planner: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
