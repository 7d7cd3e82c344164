/*
 * `mcp` tools through the C ABI: a python-utcp MCP manual call template given to
 * utp_register_manual() as JSON text, its tools called, isError as UTP_ERR_TOOL_FAILED,
 * and utp_engine_free() ending the server. The server is the Rust SDK one of
 * core/examples/mcp_test_server.rs, whose path mk/c.mk passes in UTP_MCP_TEST_SERVER.
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

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
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
