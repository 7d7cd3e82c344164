/*
 * C ABI tests for streaming calls: utp_call_tool_stream / utp_stream_next /
 * utp_stream_cancel / utp_stream_free against a loopback server the test runs itself,
 * for an `sse` tool (GET /sse/<case>, text/event-stream) and a `streamable_http` tool
 * (POST /ndjson/<case>, application/x-ndjson). Items arrive as the server sends them
 * (the server sends the last one only after the test has the first), a timeout of
 * utp_stream_next leaves the stream usable, cancelling or freeing a stream closes the
 * connection (the server sees it go), an error mid-stream is returned with its code,
 * and bad arguments give UTP_ERR_INVALID_ARGUMENT.
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
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "loopback.h"

#define MAX_EVENT_SIZE 1024
#define MAX_CONNECTIONS 16

/*
 * The server. Cases: `gated` sends item 1, waits for `released`, then items 2 and 3
 * (`sent_last`); `endless` sends item 1, then keep-alives every 50 ms until a send fails
 * (`disconnected`); `broken` sends item 1, waits for `released`, then what the client
 * rejects (an event over MAX_EVENT_SIZE, a line that is not JSON). One thread per
 * connection; stream_server_stop() releases, shuts everything down and joins.
 */
struct stream_server {
    int listen_fd;
    int port;
    pthread_t acceptor;
    pthread_t threads[MAX_CONNECTIONS];
    int fds[MAX_CONNECTIONS];
    int connections; /* written by the acceptor only, read after it is joined */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int released;
    int sent_last;
    int disconnected;
};

struct connection {
    struct stream_server *server;
    int fd;
};

static int send_text(int fd, const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
        if (n <= 0) return 0;
        text += n;
        len -= (size_t)n;
    }
    return 1;
}

static void deadline_in(struct timespec *at, long ms) {
    clock_gettime(CLOCK_REALTIME, at);
    at->tv_sec += ms / 1000;
    at->tv_nsec += (ms % 1000) * 1000000L;
    if (at->tv_nsec >= 1000000000L) {
        at->tv_sec++;
        at->tv_nsec -= 1000000000L;
    }
}

/* Wait (at most `ms`) until *flag is set; returns it. */
static int wait_flag(struct stream_server *server, int *flag, long ms) {
    struct timespec at;
    deadline_in(&at, ms);
    pthread_mutex_lock(&server->lock);
    while (!*flag && pthread_cond_timedwait(&server->changed, &server->lock, &at) == 0) {
    }
    int value = *flag;
    pthread_mutex_unlock(&server->lock);
    return value;
}

static void set_flag(struct stream_server *server, int *flag) {
    pthread_mutex_lock(&server->lock);
    *flag = 1;
    pthread_cond_broadcast(&server->changed);
    pthread_mutex_unlock(&server->lock);
}

static void *serve_connection(void *arg) {
    struct connection *c = arg;
    struct stream_server *server = c->server;
    int fd = c->fd;
    free(c);
    char request[4096];
    size_t have = 0;
    while (have + 1 < sizeof request) {
        ssize_t n = recv(fd, request + have, sizeof request - 1 - have, 0);
        if (n <= 0) return NULL;
        have += (size_t)n;
        request[have] = '\0';
        if (strstr(request, "\r\n\r\n") != NULL) break;
    }
    int sse = strncmp(request, "GET /sse/", 9) == 0;
    const char *item_format = sse ? "data: {\"n\": %d}\n\n" : "{\"n\": %d}\n";
    char item[64];
    send_text(fd, sse ? "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                      : "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n");
    snprintf(item, sizeof item, item_format, 1);
    send_text(fd, item);
    if (strstr(request, "/gated ") != NULL) {
        wait_flag(server, &server->released, 10000);
        snprintf(item, sizeof item, item_format, 2);
        send_text(fd, item);
        snprintf(item, sizeof item, item_format, 3);
        send_text(fd, item);
        set_flag(server, &server->sent_last);
    } else if (strstr(request, "/endless ") != NULL) {
        for (;;) {
            struct timespec pause = {0, 50 * 1000000L};
            nanosleep(&pause, NULL);
            if (!send_text(fd, sse ? ": keep-alive\n\n" : "\n")) break;
        }
        set_flag(server, &server->disconnected);
    } else if (strstr(request, "/broken ") != NULL) {
        wait_flag(server, &server->released, 10000);
        if (sse) {
            char big[2 * MAX_EVENT_SIZE + 16];
            memcpy(big, "data: ", 6);
            memset(big + 6, 'x', 2 * MAX_EVENT_SIZE);
            strcpy(big + 6 + 2 * MAX_EVENT_SIZE, "\n\n");
            send_text(fd, big);
        } else {
            send_text(fd, "not json\n");
        }
    }
    shutdown(fd, SHUT_WR);
    return NULL;
}

static void *accept_connections(void *arg) {
    struct stream_server *server = arg;
    for (;;) {
        int fd = accept(server->listen_fd, NULL, NULL);
        if (fd < 0) return NULL; /* the listener was shut down */
        int i = server->connections;
        struct connection *c = malloc(sizeof *c);
        if (c == NULL || i == MAX_CONNECTIONS) {
            free(c);
            close(fd);
            continue;
        }
        c->server = server;
        c->fd = fd;
        if (pthread_create(&server->threads[i], NULL, serve_connection, c) != 0) {
            free(c);
            close(fd);
            continue;
        }
        server->fds[i] = fd;
        server->connections = i + 1;
    }
}

static int stream_server_start(struct stream_server *server) {
    memset(server, 0, sizeof *server);
    pthread_mutex_init(&server->lock, NULL);
    pthread_cond_init(&server->changed, NULL);
    server->listen_fd = loopback_socket(SOCK_STREAM, 64, &server->port);
    if (server->listen_fd < 0) return 0;
    if (pthread_create(&server->acceptor, NULL, accept_connections, server) != 0) {
        close(server->listen_fd);
        return 0;
    }
    return 1;
}

static void stream_server_stop(struct stream_server *server) {
    set_flag(server, &server->released);
    shutdown(server->listen_fd, SHUT_RDWR);
    pthread_join(server->acceptor, NULL);
    close(server->listen_fd);
    for (int i = 0; i < server->connections; i++) {
        shutdown(server->fds[i], SHUT_RDWR);
        pthread_join(server->threads[i], NULL);
        close(server->fds[i]);
    }
    pthread_mutex_destroy(&server->lock);
    pthread_cond_destroy(&server->changed);
}

/* An engine with the `feed` manual: sse_<case> and http_<case> for every case. */
static utp_engine_t *feed_engine(const struct stream_server *server) {
    char config[64];
    snprintf(config, sizeof config, "{\"calls\": {\"max_event_size\": %d}}", MAX_EVENT_SIZE);
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(config, &engine), "engine_new")) return NULL;
    char manual[2048];
    int at = snprintf(manual, sizeof manual, "{\"tools\": [");
    const char *cases[] = {"gated", "endless", "broken"};
    for (int i = 0; i < 3; i++) {
        at += snprintf(manual + at, sizeof manual - (size_t)at,
                       "%s{\"name\": \"sse_%s\", \"tool_call_template\": {\"call_template_type\": \"sse\","
                       " \"url\": \"http://127.0.0.1:%d/sse/%s\"}},"
                       "{\"name\": \"http_%s\", \"tool_call_template\": {\"call_template_type\": \"streamable_http\","
                       " \"http_method\": \"POST\", \"url\": \"http://127.0.0.1:%d/ndjson/%s\"}}",
                       i ? "," : "", cases[i], server->port, cases[i], cases[i], server->port, cases[i]);
    }
    snprintf(manual + at, sizeof manual - (size_t)at, "]}");
    char *names = NULL;
    if (!ok(utp_register_manual(engine, manual, "feed", &names), "register feed")) {
        utp_engine_free(engine);
        return NULL;
    }
    utp_string_free(names);
    return engine;
}

/* utp_stream_next succeeds with exactly `want` (NULL: the end of the stream). */
static void expect_item(utp_stream_t *stream, int64_t timeout_ms, const char *want, const char *what) {
    char *item = (char *)"not written";
    utp_error_t *err = utp_stream_next(stream, timeout_ms, &item);
    if (!ok(err, what)) return;
    if (want == NULL) {
        CHECK(item == NULL, "%s: expected the end, got %s", what, item);
    } else {
        CHECK(item != NULL && strcmp(item, want) == 0, "%s: expected %s, got %s", what, want, item ? item : "the end");
    }
    utp_string_free(item);
}

static void test_items_arrive_as_sent(const char *kind) {
    struct stream_server server;
    if (!stream_server_start(&server)) {
        CHECK(0, "cannot start the loopback server");
        return;
    }
    utp_engine_t *engine = feed_engine(&server);
    char tool[64];
    snprintf(tool, sizeof tool, "feed.%s_gated", kind);
    utp_stream_t *stream = NULL;
    if (engine != NULL && ok(utp_call_tool_stream(engine, tool, NULL, "{\"timeout\": 5}", &stream), tool)) {
        expect_item(stream, -1, "{\"n\":1}", "item 1");
        pthread_mutex_lock(&server.lock);
        int early = server.sent_last;
        pthread_mutex_unlock(&server.lock);
        CHECK(!early, "%s: item 1 arrived only after the server sent the last one", kind);
        /* Nothing more comes before the release: a bounded wait times out, the stream goes on. */
        char *item = NULL;
        expect_code(utp_stream_next(stream, 100, &item), UTP_ERR_TIMEOUT, "next with a timeout");
        CHECK(item == NULL, "out_item_json reset on error");
        set_flag(&server, &server.released);
        expect_item(stream, -1, "{\"n\":2}", "item 2");
        expect_item(stream, 5000, "{\"n\":3}", "item 3");
        expect_item(stream, -1, NULL, "the end");
        expect_item(stream, -1, NULL, "still the end");
        utp_stream_free(stream);
    }
    utp_engine_free(engine);
    stream_server_stop(&server);
}

struct canceller {
    utp_stream_t *stream;
};

static void *cancel_later(void *arg) {
    struct canceller *c = arg;
    struct timespec pause = {0, 100 * 1000000L};
    nanosleep(&pause, NULL);
    utp_stream_cancel(c->stream);
    return NULL;
}

static void test_cancel_and_free_close_the_connection(const char *kind) {
    struct stream_server server;
    if (!stream_server_start(&server)) {
        CHECK(0, "cannot start the loopback server");
        return;
    }
    utp_engine_t *engine = feed_engine(&server);
    char tool[64];
    snprintf(tool, sizeof tool, "feed.%s_endless", kind);
    utp_stream_t *stream = NULL;
    if (engine != NULL && ok(utp_call_tool_stream(engine, tool, "{}", NULL, &stream), tool)) {
        expect_item(stream, -1, "{\"n\":1}", "item 1");
        /* Another thread cancels while this one waits (only keep-alives come). */
        struct canceller c = {stream};
        pthread_t thread;
        pthread_create(&thread, NULL, cancel_later, &c);
        char *item = NULL;
        expect_code(utp_stream_next(stream, -1, &item), UTP_ERR_CANCELLED, "next while cancelled");
        pthread_join(thread, NULL);
        CHECK(wait_flag(&server, &server.disconnected, 5000), "%s: the server never saw the client go away", kind);
        expect_item(stream, -1, NULL, "the end after cancel");
        utp_stream_cancel(stream); /* idempotent */
        utp_stream_free(stream);
    }
    /* Freeing a stream that is still open closes its connection too. */
    pthread_mutex_lock(&server.lock);
    server.disconnected = 0;
    pthread_mutex_unlock(&server.lock);
    stream = NULL;
    if (engine != NULL && ok(utp_call_tool_stream(engine, tool, NULL, NULL, &stream), tool)) {
        expect_item(stream, -1, "{\"n\":1}", "item 1 again");
        utp_stream_free(stream);
        CHECK(wait_flag(&server, &server.disconnected, 5000), "%s: free did not close the connection", kind);
    }
    utp_engine_free(engine);
    stream_server_stop(&server);
}

/* Against the contract (streams are freed before their engine), but never an early end. */
static void test_engine_freed_first(const char *kind) {
    struct stream_server server;
    if (!stream_server_start(&server)) {
        CHECK(0, "cannot start the loopback server");
        return;
    }
    utp_engine_t *engine = feed_engine(&server);
    char tool[64];
    snprintf(tool, sizeof tool, "feed.%s_endless", kind);
    utp_stream_t *stream = NULL;
    if (engine != NULL && ok(utp_call_tool_stream(engine, tool, NULL, NULL, &stream), tool)) {
        expect_item(stream, -1, "{\"n\":1}", "item 1");
        utp_engine_free(engine);
        engine = NULL;
        CHECK(wait_flag(&server, &server.disconnected, 5000), "%s: freeing the engine kept the connection", kind);
        char *item = NULL;
        expect_code(utp_stream_next(stream, -1, &item), UTP_ERR_CANCELLED, "next after the engine was freed");
        expect_item(stream, -1, NULL, "then the end");
        utp_stream_free(stream);
    }
    utp_engine_free(engine);
    stream_server_stop(&server);
}

static void test_error_mid_stream(const char *kind) {
    struct stream_server server;
    if (!stream_server_start(&server)) {
        CHECK(0, "cannot start the loopback server");
        return;
    }
    utp_engine_t *engine = feed_engine(&server);
    char tool[64];
    snprintf(tool, sizeof tool, "feed.%s_broken", kind);
    utp_stream_t *stream = NULL;
    if (engine != NULL && ok(utp_call_tool_stream(engine, tool, NULL, NULL, &stream), tool)) {
        expect_item(stream, -1, "{\"n\":1}", "item 1");
        set_flag(&server, &server.released);
        char *item = NULL;
        utp_error_t *err = utp_stream_next(stream, -1, &item);
        CHECK(err != NULL && find(utp_error_message(err), tool) >= 0, "%s: the error names the tool", kind);
        expect_code(err, UTP_ERR_TRANSPORT, "error mid-stream");
        CHECK(item == NULL, "no item with the error");
        expect_item(stream, -1, NULL, "the end after the error");
        utp_stream_free(stream);
    }
    utp_engine_free(engine);
    stream_server_stop(&server);
}

static void test_other_tools_and_bad_arguments(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(NULL, &engine), "engine_new")) return;
    char *names = NULL;
    if (ok(utp_register_manual(engine,
                               "{\"name\": \"docs\", \"tools\": [{\"name\": \"hello\", \"tool_call_template\":"
                               " {\"call_template_type\": \"text\", \"content\": \"hello\"}}]}",
                               NULL, &names),
           "register text manual")) {
        utp_string_free(names);
    }
    /* A tool that does not stream gives its one result. */
    utp_stream_t *stream = NULL;
    if (ok(utp_call_tool_stream(engine, "docs.hello", NULL, NULL, &stream), "stream a text tool")) {
        expect_item(stream, -1, "\"hello\"", "the one result");
        expect_item(stream, -1, NULL, "then the end");
        utp_stream_free(stream);
    }
    /* Cancelled before reading: the next call fails with UTP_ERR_CANCELLED, then the end. */
    stream = NULL;
    if (ok(utp_call_tool_stream(engine, "docs.hello", NULL, NULL, &stream), "stream to cancel")) {
        utp_stream_cancel(stream);
        char *item = NULL;
        expect_code(utp_stream_next(stream, -1, &item), UTP_ERR_CANCELLED, "next after cancel");
        expect_item(stream, -1, NULL, "the end after cancel");
        utp_stream_free(stream);
    }

    stream = (utp_stream_t *)engine; /* any non-NULL value: it must be reset */
    expect_code(utp_call_tool_stream(NULL, "docs.hello", NULL, NULL, &stream), UTP_ERR_INVALID_ARGUMENT, "NULL engine");
    CHECK(stream == NULL, "out_stream reset on error");
    expect_code(utp_call_tool_stream(engine, NULL, NULL, NULL, &stream), UTP_ERR_INVALID_ARGUMENT, "NULL name");
    expect_code(utp_call_tool_stream(engine, "docs.hello", NULL, NULL, NULL), UTP_ERR_INVALID_ARGUMENT,
                "NULL out_stream");
    expect_code(utp_call_tool_stream(engine, "docs.\xff", NULL, NULL, &stream), UTP_ERR_INVALID_ARGUMENT,
                "name not UTF-8");
    expect_code(utp_call_tool_stream(engine, "docs.hello", "{not json", NULL, &stream), UTP_ERR_INVALID_ARGUMENT,
                "args not JSON");
    expect_code(utp_call_tool_stream(engine, "docs.hello", "[1]", NULL, &stream), UTP_ERR_VALIDATION_FAILED,
                "args not an object");
    expect_code(utp_call_tool_stream(engine, "docs.hello", NULL, "{\"timeout\": -1}", &stream),
                UTP_ERR_INVALID_ARGUMENT, "negative timeout");
    expect_code(utp_call_tool_stream(engine, "docs.hello", NULL, "{\"timout\": 1}", &stream),
                UTP_ERR_INVALID_ARGUMENT, "unknown option");
    expect_code(utp_call_tool_stream(engine, "docs.nope", NULL, NULL, &stream), UTP_ERR_NOT_FOUND, "unknown tool");
    CHECK(stream == NULL, "no stream on error");

    char *item = (char *)"not written";
    expect_code(utp_stream_next(NULL, -1, &item), UTP_ERR_INVALID_ARGUMENT, "next on NULL");
    CHECK(item == NULL, "out_item_json reset on error");
    if (ok(utp_call_tool_stream(engine, "docs.hello", NULL, NULL, &stream), "stream for bad next")) {
        expect_code(utp_stream_next(stream, -1, NULL), UTP_ERR_INVALID_ARGUMENT, "NULL out_item_json");
        utp_stream_free(stream);
    }
    utp_stream_cancel(NULL);
    utp_stream_free(NULL);
    utp_engine_free(engine);
}

int main(void) {
    const char *kinds[] = {"sse", "http"};
    for (int i = 0; i < 2; i++) {
        test_items_arrive_as_sent(kinds[i]);
        test_cancel_and_free_close_the_connection(kinds[i]);
        test_error_mid_stream(kinds[i]);
        test_engine_freed_first(kinds[i]);
    }
    test_other_tools_and_bad_arguments();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
