/*
 * C ABI tests for graphql tools: a python-utcp-shaped manual call template passed to
 * utp_register_manual is introspected, its tool is called with a built operation, a
 * GraphQL `errors` answer is UTP_ERR_TOOL_FAILED, and a bad template field is
 * UTP_ERR_INVALID_ARGUMENT. The peer is a small loopback HTTP/1.1 server in this file that
 * answers fixed GraphQL responses: GraphQL semantics are tested against real GraphQL
 * servers in core/tests/graphql.rs, bindings-python and bindings-node; this proves the C path.
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "loopback.h"

/* The introspection answer for `type Query { add(a: Int!, b: Int!): Int! }`. */
static const char INTROSPECTION[] =
    "{\"data\":{\"__schema\":{\"queryType\":{\"name\":\"Query\"},\"mutationType\":null,\"subscriptionType\":null,"
    "\"types\":[{\"kind\":\"OBJECT\",\"name\":\"Query\",\"description\":null,\"fields\":[{\"name\":\"add\","
    "\"description\":\"Adds two integers.\",\"args\":["
    "{\"name\":\"a\",\"description\":null,\"defaultValue\":null,\"type\":{\"kind\":\"NON_NULL\",\"name\":null,"
    "\"ofType\":{\"kind\":\"SCALAR\",\"name\":\"Int\",\"ofType\":null}}},"
    "{\"name\":\"b\",\"description\":null,\"defaultValue\":null,\"type\":{\"kind\":\"NON_NULL\",\"name\":null,"
    "\"ofType\":{\"kind\":\"SCALAR\",\"name\":\"Int\",\"ofType\":null}}}],"
    "\"type\":{\"kind\":\"NON_NULL\",\"name\":null,\"ofType\":{\"kind\":\"SCALAR\",\"name\":\"Int\",\"ofType\":null}}}],"
    "\"inputFields\":null,\"enumValues\":null,\"possibleTypes\":null},"
    "{\"kind\":\"SCALAR\",\"name\":\"Int\",\"description\":null,\"fields\":null,\"inputFields\":null,"
    "\"enumValues\":null,\"possibleTypes\":null}]}}}";

#define MAX_CONNECTIONS 16

struct gql_server {
    int listen_fd;
    int port;
    pthread_t acceptor;
    pthread_t threads[MAX_CONNECTIONS];
    int fds[MAX_CONNECTIONS];
    int connections; /* written by the acceptor only, read after it is joined */
    int add_calls;   /* requests that carried the built `add` operation with its variables */
};

static struct gql_server server;

/* The answer to one request body. */
static const char *answer(const char *body) {
    if (strstr(body, "__schema") != NULL) return INTROSPECTION;
    if (strstr(body, "broken") != NULL) return "{\"data\":null,\"errors\":[{\"message\":\"broken on purpose\"}]}";
    if (strstr(body, "query($a: Int!, $b: Int!) { add(a: $a, b: $b) }") != NULL &&
        strstr(body, "\"variables\":{\"a\":1,\"b\":2}") != NULL) {
        __atomic_add_fetch(&server.add_calls, 1, __ATOMIC_SEQ_CST);
        return "{\"data\":{\"add\":3}}";
    }
    return "{\"errors\":[{\"message\":\"unexpected request\"}]}";
}

static void *serve_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    static const size_t size = 16384;
    char *buf = malloc(size);
    size_t have = 0;
    while (buf != NULL) {
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        const char *length = strstr(buf, "content-length: ");
        size_t body_len = length != NULL ? (size_t)strtoul(length + 16, NULL, 10) : 0;
        size_t head_len = end != NULL ? (size_t)(end + 4 - buf) : 0;
        if (end == NULL || have < head_len + body_len) {
            if (have + 1 >= size) break;
            ssize_t n = recv(fd, buf + have, size - 1 - have, 0);
            if (n <= 0) break;
            have += (size_t)n;
            continue;
        }
        char saved = buf[head_len + body_len];
        buf[head_len + body_len] = '\0';
        const char *reply = answer(buf + head_len);
        buf[head_len + body_len] = saved;
        char head[160];
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         strlen(reply));
        if (!send_all(fd, head, (size_t)n) || !send_all(fd, reply, strlen(reply))) break;
        size_t used = head_len + body_len;
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    free(buf);
    return NULL;
}

static void *accept_connections(void *arg) {
    (void)arg;
    for (;;) {
        int fd = accept(server.listen_fd, NULL, NULL);
        if (fd < 0) return NULL; /* the listener was shut down */
        int i = server.connections;
        if (i == MAX_CONNECTIONS || pthread_create(&server.threads[i], NULL, serve_connection, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        server.fds[i] = fd;
        server.connections = i + 1;
    }
}

static int server_start(void) {
    memset(&server, 0, sizeof server);
    server.listen_fd = loopback_socket(SOCK_STREAM, 16, &server.port);
    if (server.listen_fd < 0) return 0;
    if (pthread_create(&server.acceptor, NULL, accept_connections, NULL) != 0) {
        close(server.listen_fd);
        return 0;
    }
    return 1;
}

static void server_stop(void) {
    shutdown(server.listen_fd, SHUT_RDWR);
    pthread_join(server.acceptor, NULL);
    close(server.listen_fd);
    for (int i = 0; i < server.connections; i++) {
        shutdown(server.fds[i], SHUT_RDWR);
        pthread_join(server.threads[i], NULL);
        close(server.fds[i]);
    }
}

int main(void) {
    if (!server_start()) {
        fprintf(stderr, "cannot start the loopback server\n");
        return 1;
    }
    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new(NULL, &engine), "engine_new")) {
        char text[1024];
        char *out = NULL;
        snprintf(text, sizeof text, "{\"call_template_type\":\"graphql\",\"url\":\"http://127.0.0.1:%d/graphql\"}",
                 server.port);
        if (ok(utp_register_manual(engine, text, "gql", &out), "register a graphql manual call template")) {
            CHECK(strcmp(out, "[\"gql.add\"]") == 0, "tools: %s", out);
            utp_string_free(out);
            out = NULL;
            if (ok(utp_call_tool(engine, "gql.add", "{\"a\": 1, \"b\": 2}", NULL, &out), "call gql.add")) {
                CHECK(strcmp(out, "{\"add\":3}") == 0, "gql.add returned %s", out);
                utp_string_free(out);
                out = NULL;
            }
            CHECK(server.add_calls == 1, "the server saw %d built add operations", server.add_calls);
            expect_code(utp_call_tool(engine, "gql.add", "{\"a\": \"one\", \"b\": 2}", NULL, &out),
                        UTP_ERR_VALIDATION_FAILED, "arguments checked against the introspected schema");
        }
        snprintf(text, sizeof text,
                 "{\"tools\":[{\"name\":\"broken\",\"tool_call_template\":{\"call_template_type\":\"graphql\","
                 "\"url\":\"http://127.0.0.1:%d/graphql\",\"query\":\"query B($id: ID!) { broken(id: $id) }\"}}]}",
                 server.port);
        if (ok(utp_register_manual(engine, text, "api", &out), "register a manual with an explicit query")) {
            utp_string_free(out);
            out = NULL;
            expect_code(utp_call_tool(engine, "api.broken", "{\"id\": \"1\"}", NULL, &out), UTP_ERR_TOOL_FAILED,
                        "GraphQL errors");
        }
        utp_error_t *err = utp_register_manual(
            engine, "{\"call_template_type\":\"graphql\",\"url\":\"http://127.0.0.1:9/\",\"operation_type\":\"read\"}",
            "bad", &out);
        CHECK(err != NULL && find(utp_error_message(err), "`operation_type`") >= 0, "bad operation_type named");
        expect_code(err, UTP_ERR_INVALID_ARGUMENT, "bad operation_type");
        utp_engine_free(engine);
    }
    server_stop();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
