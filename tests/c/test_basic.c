/*
 * C ABI tests for libutp: engine, manual registration, tools, search, discovery,
 * error handling (NULL, invalid UTF-8, bad JSON) and concurrent use.
 *
 * Usage: test_basic [MANUALS_DIR]
 *   MANUALS_DIR (optional) is discovered with a separate engine; it may hold zero
 *   manuals. Everything else uses a temp directory the test writes itself.
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static const char *MATH_MANUAL =
    "{\"tools\":["
    "{\"name\":\"add\",\"description\":\"Add two numbers\",\"tags\":[\"arithmetic\"],"
    "\"inputs\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"},\"b\":{\"type\":\"number\"}}},"
    "\"tool_call_template\":{\"call_template_type\":\"native\"}},"
    "{\"name\":\"multiply\",\"description\":\"Multiply two numbers and return the product\",\"tags\":[\"product\"],"
    "\"inputs\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"},\"b\":{\"type\":\"number\"}}},"
    "\"tool_call_template\":{\"call_template_type\":\"native\"}}"
    "]}";

static const char *WEATHER_MANUAL =
    "{\"utcp_version\":\"1.0.1\",\"manual_version\":\"1.0.0\",\"tools\":["
    "{\"name\":\"forecast\",\"description\":\"Weather forecast for a city\","
    "\"inputs\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}},"
    "\"tool_call_template\":{\"call_template_type\":\"native\"}}"
    "]}";

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == NULL) return 0;
    int good = fputs(text, f) >= 0;
    return (fclose(f) == 0) && good;
}

static void test_version(void) {
    const char *v = utp_version();
    CHECK(v != NULL, "utp_version returned NULL");
    CHECK(v != NULL && strcmp(v, UTP_VERSION_STRING) == 0, "utp_version %s != header %s", v, UTP_VERSION_STRING);
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", UTP_VERSION_MAJOR, UTP_VERSION_MINOR, UTP_VERSION_PATCH);
    CHECK(strcmp(expected, UTP_VERSION_STRING) == 0, "version macros disagree: %s", expected);
    CHECK(UTP_ERR_INVALID_ARGUMENT == 1 && UTP_ERR_ALREADY_EXISTS == 3 && UTP_ERR_PANIC == 19, "error codes");
}

static void test_engine_new_errors(void) {
    utp_engine_t *e = (utp_engine_t *)&passed; /* garbage that must be reset to NULL */
    expect_code(utp_engine_new("{not json", &e), UTP_ERR_INVALID_ARGUMENT, "engine_new bad JSON");
    CHECK(e == NULL, "out_engine not reset on error");
    expect_code(utp_engine_new("[1,2]", &e), UTP_ERR_INVALID_ARGUMENT, "engine_new non-object config");
    expect_code(utp_engine_new("{}", NULL), UTP_ERR_INVALID_ARGUMENT, "engine_new NULL out");
    expect_code(utp_engine_new("{\"x\":\"\xff\"}", &e), UTP_ERR_INVALID_ARGUMENT, "engine_new invalid UTF-8");
    /* Manuals listed in the config are registered by engine_new; a missing one fails it. */
    expect_code(utp_engine_new("{\"manuals\": [\"/nonexistent/x.utcp.json\"]}", &e), UTP_ERR_NOT_FOUND,
                "engine_new with a missing configured manual");
    CHECK(e == NULL, "out_engine set although a configured manual failed");
    if (ok(utp_engine_new("{\"manuals\": [{\"name\": \"greet\", \"tools\": [{\"name\": \"hi\", \"tool_call_template\": "
                          "{\"call_template_type\": \"text\", \"content\": \"hello\"}}]}]}", &e),
           "engine_new with an inline configured manual")) {
        char *tools = NULL;
        if (ok(utp_tools(e, &tools), "tools of configured engine")) {
            CHECK(find(tools, "greet.hi") >= 0, "configured manual not registered: %s", tools);
            utp_string_free(tools);
        }
        utp_engine_free(e);
    }
    /* NULL config means defaults. */
    if (ok(utp_engine_new(NULL, &e), "engine_new NULL config")) {
        CHECK(e != NULL, "engine NULL after success");
        utp_engine_free(e);
    }
}

static void test_registry(utp_engine_t *engine) {
    char *names = NULL;
    if (ok(utp_register_manual(engine, MATH_MANUAL, "math", &names), "register math")) {
        CHECK(names != NULL && strcmp(names, "[\"math.add\",\"math.multiply\"]") == 0, "names: %s", names);
        utp_string_free(names);
    }

    /* The same name again. */
    names = (char *)"garbage";
    expect_code(utp_register_manual(engine, MATH_MANUAL, "math", &names), UTP_ERR_ALREADY_EXISTS, "register twice");
    CHECK(names == NULL, "out_tool_names_json not reset on error");

    char *tools = NULL;
    if (ok(utp_tools(engine, &tools), "tools")) {
        CHECK(find(tools, "\"math.add\"") >= 0 && find(tools, "\"math.multiply\"") >= 0, "tools: %s", tools);
        CHECK(tools[0] == '[', "tools is not an array: %s", tools);
        utp_string_free(tools);
    }

    char *found = NULL;
    if (ok(utp_search_tools(engine, "multiply numbers product", 10, NULL, &found), "search")) {
        long mul = find(found, "math.multiply"), add = find(found, "math.add");
        CHECK(mul >= 0 && (add < 0 || mul < add), "multiply not first: %s", found);
        utp_string_free(found);
    }
    if (ok(utp_search_tools(engine, "add two numbers", 1, NULL, &found), "search limit 1")) {
        CHECK(find(found, "math.add") >= 0 && find(found, "math.multiply") < 0, "limit 1: %s", found);
        utp_string_free(found);
    }
    if (ok(utp_search_tools(engine, "numbers", 0, "[\"arithmetic\"]", &found), "search with tags")) {
        CHECK(find(found, "math.add") >= 0 && find(found, "math.multiply") < 0, "tag filter: %s", found);
        utp_string_free(found);
    }
    if (ok(utp_search_tools(engine, "zzzqqq", 5, "null", &found), "search no match")) {
        CHECK(strcmp(found, "[]") == 0, "no match: %s", found);
        utp_string_free(found);
    }
    found = (char *)"garbage";
    expect_code(utp_search_tools(engine, "x", 5, "[1]", &found), UTP_ERR_INVALID_ARGUMENT, "tags not strings");
    CHECK(found == NULL, "out_tools_json not reset on error");
    expect_code(utp_search_tools(engine, "x", 5, "{bad", &found), UTP_ERR_INVALID_ARGUMENT, "tags bad JSON");
    expect_code(utp_search_tools(engine, "x", 5, "\"t\"", &found), UTP_ERR_INVALID_ARGUMENT, "tags not array");
}

static void test_bad_arguments(utp_engine_t *engine) {
    char *out = NULL;
    bool removed = true;
    const char *bad_utf8 = "\xc3\x28 not utf8";

    expect_code(utp_register_manual(NULL, MATH_MANUAL, "m2", &out), UTP_ERR_INVALID_ARGUMENT, "register NULL engine");
    expect_code(utp_register_manual(engine, NULL, "m2", &out), UTP_ERR_INVALID_ARGUMENT, "register NULL manual");
    expect_code(utp_register_manual(engine, MATH_MANUAL, "m2", NULL), UTP_ERR_INVALID_ARGUMENT, "register NULL out");
    expect_code(utp_register_manual(engine, bad_utf8, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "register bad UTF-8");
    expect_code(utp_register_manual(engine, MATH_MANUAL, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT,
                "register bad UTF-8 name");
    expect_code(utp_register_manual(engine, "", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "register empty source");
    expect_code(utp_register_manual(engine, "{\"tools\": [", "m2", &out), UTP_ERR_INVALID_MANUAL, "register bad JSON");
    expect_code(utp_register_manual(engine, "{\"tools\": 42}", "m2", &out), UTP_ERR_INVALID_MANUAL,
                "register invalid manual");
    expect_code(utp_register_manual(engine, "/nonexistent/utp/manual.json", NULL, &out), UTP_ERR_NOT_FOUND,
                "register missing file");
    CHECK(out == NULL, "out set after failures");

    expect_code(utp_tools(NULL, &out), UTP_ERR_INVALID_ARGUMENT, "tools NULL engine");
    expect_code(utp_tools(engine, NULL), UTP_ERR_INVALID_ARGUMENT, "tools NULL out");
    expect_code(utp_search_tools(NULL, "q", 1, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "search NULL engine");
    expect_code(utp_search_tools(engine, NULL, 1, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "search NULL query");
    expect_code(utp_search_tools(engine, bad_utf8, 1, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "search bad UTF-8");
    expect_code(utp_search_tools(engine, "q", 1, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "tags bad UTF-8");
    expect_code(utp_search_tools(engine, "q", 1, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "search NULL out");
    expect_code(utp_deregister_manual(NULL, "math", &removed), UTP_ERR_INVALID_ARGUMENT, "deregister NULL engine");
    CHECK(removed == false, "out_removed not reset on error");
    expect_code(utp_deregister_manual(engine, NULL, &removed), UTP_ERR_INVALID_ARGUMENT, "deregister NULL name");
    expect_code(utp_deregister_manual(engine, "math", NULL), UTP_ERR_INVALID_ARGUMENT, "deregister NULL out");
    expect_code(utp_deregister_manual(engine, bad_utf8, &removed), UTP_ERR_INVALID_ARGUMENT, "deregister bad UTF-8");
    expect_code(utp_discover(NULL, "/tmp", &out), UTP_ERR_INVALID_ARGUMENT, "discover NULL engine");
    expect_code(utp_discover(engine, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "discover NULL path");
    expect_code(utp_discover(engine, "/tmp", NULL), UTP_ERR_INVALID_ARGUMENT, "discover NULL out");
    expect_code(utp_discover(engine, bad_utf8, &out), UTP_ERR_INVALID_ARGUMENT, "discover bad UTF-8");
    expect_code(utp_discover(engine, "/nonexistent/utp/dir", &out), UTP_ERR_NOT_FOUND, "discover missing dir");

    /* NULL handles are harmless. */
    CHECK(utp_error_code(NULL) == 0, "error_code(NULL)");
    CHECK(utp_error_message(NULL) != NULL && utp_error_message(NULL)[0] == '\0', "error_message(NULL)");
    utp_error_free(NULL);
    utp_string_free(NULL);
    utp_engine_free(NULL);
    passed++;

    /* The failed registrations left nothing behind. */
    char *tools = NULL;
    if (ok(utp_tools(engine, &tools), "tools after failures")) {
        CHECK(find(tools, "m2.") < 0, "a failed registration leaked tools: %s", tools);
        utp_string_free(tools);
    }
}

static void test_deregister(utp_engine_t *engine) {
    bool removed = false;
    if (ok(utp_deregister_manual(engine, "math", &removed), "deregister")) CHECK(removed, "math not removed");
    if (ok(utp_deregister_manual(engine, "math", &removed), "deregister again")) CHECK(!removed, "removed twice");
    char *tools = NULL;
    if (ok(utp_tools(engine, &tools), "tools after deregister")) {
        CHECK(strcmp(tools, "[]") == 0, "tools left: %s", tools);
        utp_string_free(tools);
    }
    /* The name is free again. */
    char *names = NULL;
    if (ok(utp_register_manual(engine, MATH_MANUAL, "math", &names), "re-register math")) utp_string_free(names);
}

static void test_discover_tempdir(utp_engine_t *engine) {
    char dir[] = "/tmp/utp_c_test_XXXXXX";
    if (mkdtemp(dir) == NULL) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    char manual_path[256], other_path[256];
    snprintf(manual_path, sizeof manual_path, "%s/weather.json", dir);
    snprintf(other_path, sizeof other_path, "%s/notes.json", dir);
    CHECK(write_file(manual_path, WEATHER_MANUAL), "write %s", manual_path);
    CHECK(write_file(other_path, "{\"hello\": \"not a manual\"}"), "write %s", other_path);

    char *report = NULL;
    if (ok(utp_discover(engine, dir, &report), "discover temp dir")) {
        CHECK(find(report, "\"root\"") >= 0 && find(report, "\"files\"") >= 0, "report shape: %s", report);
        CHECK(find(report, "\"status\":\"registered\"") >= 0, "nothing registered: %s", report);
        CHECK(find(report, "\"manual\":\"weather\"") >= 0, "weather manual: %s", report);
        CHECK(find(report, "notes.json") >= 0, "notes.json not reported: %s", report);
        utp_string_free(report);
    }
    char *found = NULL;
    if (ok(utp_search_tools(engine, "weather forecast city", 3, NULL, &found), "search discovered")) {
        CHECK(find(found, "weather.forecast") >= 0, "discovered tool not found: %s", found);
        utp_string_free(found);
    }
    /* A single file works too; it is already registered, so its outcome is a failure entry. */
    if (ok(utp_discover(engine, manual_path, &report), "discover single file")) {
        CHECK(find(report, "ALREADY_EXISTS") >= 0, "re-discovery: %s", report);
        utp_string_free(report);
    }

    unlink(manual_path);
    unlink(other_path);
    rmdir(dir);
}

/* A spec split over files (relative-file `$ref`s) registers by path; its schemas from
   other files validate calls. */
static void test_split_spec(utp_engine_t *engine) {
    char dir[] = "/tmp/utp_c_split_XXXXXX";
    if (mkdtemp(dir) == NULL) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    char spec_path[256], tag_path[256];
    snprintf(spec_path, sizeof spec_path, "%s/openapi.json", dir);
    snprintf(tag_path, sizeof tag_path, "%s/tag.json", dir);
    CHECK(write_file(tag_path, "{\"type\": \"string\", \"enum\": [\"cat\", \"dog\"]}"), "write %s", tag_path);
    CHECK(write_file(spec_path,
                     "{\"openapi\": \"3.1.0\", \"info\": {\"title\": \"Split\", \"version\": \"1\"},"
                     " \"servers\": [{\"url\": \"http://127.0.0.1:1\"}], \"paths\": {\"/pets\": {\"get\": {"
                     "\"operationId\": \"find\", \"parameters\": [{\"name\": \"tag\", \"in\": \"query\","
                     " \"required\": true, \"schema\": {\"$ref\": \"tag.json\"}}]}}}}"),
          "write %s", spec_path);
    char *names = NULL;
    if (ok(utp_register_manual(engine, spec_path, "split", &names), "register split spec")) {
        CHECK(find(names, "split.find") >= 0, "split names: %s", names);
        utp_string_free(names);
        char *out = NULL;
        expect_code(utp_call_tool(engine, "split.find", "{\"tag\": \"cow\"}", NULL, &out), UTP_ERR_VALIDATION_FAILED,
                    "a schema from another file validates");
    }
    unlink(spec_path);
    unlink(tag_path);
    rmdir(dir);
}

static void test_discover_dir(const char *dir) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine for argv dir")) return;
    char *report = NULL;
    if (ok(utp_discover(engine, dir, &report), "discover argv dir")) {
        CHECK(find(report, "\"files\"") >= 0, "report: %s", report);
        char *tools = NULL;
        if (ok(utp_tools(engine, &tools), "tools of argv dir")) {
            /* Zero manuals is fine; when something registered, there are tools. */
            CHECK(find(report, "\"registered\"") < 0 || strcmp(tools, "[]") != 0, "registered but no tools");
            utp_string_free(tools);
        }
        utp_string_free(report);
    }
    utp_engine_free(engine);
}

enum { THREADS = 4, ROUNDS = 50 };

static void *worker(void *arg) {
    utp_engine_t *engine = (utp_engine_t *)arg;
    long bad = 0;
    for (int i = 0; i < ROUNDS; i++) {
        char *found = NULL;
        utp_error_t *err = utp_search_tools(engine, "multiply", 2, NULL, &found);
        if (err != NULL || find(found, "math.multiply") < 0) bad++;
        utp_error_free(err);
        utp_string_free(found);
        char *tools = NULL;
        err = utp_tools(engine, &tools);
        if (err != NULL) bad++;
        utp_error_free(err);
        utp_string_free(tools);
    }
    return (void *)bad;
}

static void test_threads(utp_engine_t *engine) {
    pthread_t threads[THREADS];
    int started = 0;
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&threads[i], NULL, worker, engine) == 0) started++;
    }
    CHECK(started == THREADS, "started %d threads", started);
    long bad = 0;
    for (int i = 0; i < started; i++) {
        void *r = NULL;
        pthread_join(threads[i], &r);
        bad += (long)r;
    }
    CHECK(bad == 0, "%ld failures in concurrent use", bad);
}

int main(int argc, char **argv) {
    test_version();
    test_engine_new_errors();

    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new("{}", &engine), "engine_new")) {
        test_registry(engine);
        test_bad_arguments(engine);
        test_deregister(engine);
        test_threads(engine);
        test_discover_tempdir(engine);
        test_split_spec(engine);
        utp_engine_free(engine);
    }
    if (argc > 1) test_discover_dir(argv[1]);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
