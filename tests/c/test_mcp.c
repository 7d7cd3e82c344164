/*
 * `mcp` tools through the C ABI: a python-utcp MCP manual call template given to
 * utp_register_manual() as JSON text, its tools called, isError as UTP_ERR_TOOL_FAILED,
 * and utp_engine_free() ending the server. The server is the Rust SDK one of
 * core/examples/mcp_test_server.rs, whose path mk/c.mk passes in UTP_MCP_TEST_SERVER.
 * Then an official Python SDK server over Streamable HTTP (UTP_MCP_PYTHON runs
 * UTP_MCP_HTTP_SERVER, which prints its URL): calls, and a streamed call whose
 * progress notifications come before its result.
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* Start `python script http` and read the URL it prints into `url`; returns its pid. */
static pid_t start_http_server(const char *python, const char *script, char *url, size_t size) {
    int out[2];
    if (pipe(out) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        execl(python, python, script, "http", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    FILE *lines = fdopen(out[0], "r");
    if (lines == NULL || fgets(url, (int)size, lines) == NULL) {
        if (lines != NULL) fclose(lines);
        return -1;
    }
    url[strcspn(url, "\n")] = '\0';
    fclose(lines);
    return pid;
}

/* A manual of one server at `url`, its tools called plain and streamed. */
static void http_server_checks(const char *python, const char *script) {
    char url[256];
    pid_t server = start_http_server(python, script, url, sizeof url);
    CHECK(server > 0 && strncmp(url, "http://127.0.0.1:", 17) == 0, "server started at '%s'", url);
    if (server <= 0) return;
    char manual[512];
    snprintf(manual, sizeof manual,
             "{\"name\": \"web\", \"call_template_type\": \"mcp\","
             " \"config\": {\"mcpServers\": {\"srv\": {\"url\": \"%s\"}}}}",
             url);
    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new("{}", &engine), "engine_new (http)")) {
        char *names = NULL;
        if (ok(utp_register_manual(engine, manual, NULL, &names), "register the HTTP MCP manual")) {
            CHECK(find(names, "\"web.srv.progress\"") >= 0, "names %s", names);
            utp_string_free(names);
        }
        char *result = NULL;
        if (ok(utp_call_tool(engine, "web.srv.shout", "{\"text\": \"hi\"}", NULL, &result), "call shout")) {
            CHECK(strcmp(result, "\"HI\"") == 0, "result %s", result);
            utp_string_free(result);
        }
        utp_stream_t *stream = NULL;
        if (ok(utp_call_tool_stream(engine, "web.srv.progress", "{\"steps\": 2}", NULL, &stream), "stream")) {
            const char *expected[] = {
                "{\"progress\":1.0,\"total\":2.0,\"message\":\"step 1\"}",
                "{\"progress\":2.0,\"total\":2.0,\"message\":\"step 2\"}",
                "\"done\"",
            };
            for (int i = 0; i < 3; i++) {
                char *item = NULL;
                if (ok(utp_stream_next(stream, 10000, &item), "stream_next")) {
                    CHECK(item != NULL && strcmp(item, expected[i]) == 0, "item %d: %s", i, item ? item : "(end)");
                    utp_string_free(item);
                }
            }
            char *end = NULL;
            if (ok(utp_stream_next(stream, 10000, &end), "stream end")) CHECK(end == NULL, "the result is last");
            utp_stream_free(stream);
        }
        utp_engine_free(engine);
    }
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
}

int main(void) {
    const char *server = getenv("UTP_MCP_TEST_SERVER");
    if (server == NULL || server[0] == '\0') {
        fprintf(stderr, "UTP_MCP_TEST_SERVER is not set: run this test through `make test-c`\n");
        return 1;
    }
    char manual[1024];
    snprintf(manual, sizeof manual,
             "{\"name\": \"calc\", \"call_template_type\": \"mcp\","
             " \"config\": {\"mcpServers\": {\"srv\": {\"command\": \"%s\"}}}}",
             server);
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine_new")) return 1;
    char *names = NULL;
    if (ok(utp_register_manual(engine, manual, NULL, &names), "register the MCP manual")) {
        CHECK(find(names, "\"calc.srv.add\"") >= 0 && find(names, "\"calc.srv.pid\"") >= 0, "names %s", names);
        utp_string_free(names);
    }
    char *result = NULL;
    if (ok(utp_call_tool(engine, "calc.srv.add", "{\"a\": 2, \"b\": 3}", NULL, &result), "call add")) {
        CHECK(strcmp(result, "5.0") == 0, "result %s", result);
        utp_string_free(result);
    }
    result = NULL;
    expect_code(utp_call_tool(engine, "calc.srv.fail", "{}", NULL, &result), UTP_ERR_TOOL_FAILED, "isError");
    long pid = 0;
    if (ok(utp_call_tool(engine, "calc.srv.pid", "{}", NULL, &result), "call pid")) {
        pid = strtol(result, NULL, 10);
        utp_string_free(result);
    }
    CHECK(pid > 0 && kill((pid_t)pid, 0) == 0, "the server runs (pid %ld)", pid);
    names = NULL;
    expect_code(utp_register_manual(engine,
                                    "{\"name\": \"m\", \"call_template_type\": \"mcp\","
                                    " \"config\": {\"mcpServers\": {\"s\": {\"args\": []}}}}",
                                    NULL, &names),
                UTP_ERR_INVALID_MANUAL, "a server without a command");
    utp_engine_free(engine);
    CHECK(pid > 0 && kill((pid_t)pid, 0) != 0, "utp_engine_free ended the server");
    const char *python = getenv("UTP_MCP_PYTHON");
    const char *script = getenv("UTP_MCP_HTTP_SERVER");
    if (python == NULL || script == NULL) {
        fprintf(stderr, "UTP_MCP_PYTHON / UTP_MCP_HTTP_SERVER are not set: run this test through `make test-c`\n");
        failed++;
    } else {
        http_server_checks(python, script);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
