/*
 * tcp and udp tools through the C ABI, against peers on 127.0.0.1 that the test runs on
 * its own threads: a TCP peer answering a length-prefixed request, a UDP peer answering
 * a datagram with two, a TCP peer that closes mid-frame; bad template fields and a host
 * beyond loopback give their codes.
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "loopback.h"

static int read_exactly(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* One connection: read a 4-byte big-endian length and the request, answer "echo <request>". */
static void *prefix_peer(void *arg) {
    int listener = *(int *)arg;
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) return NULL;
    unsigned char prefix[4], request[512], reply[600];
    if (read_exactly(conn, prefix, 4) == 0) {
        uint32_t n = ((uint32_t)prefix[0] << 24) | ((uint32_t)prefix[1] << 16) | ((uint32_t)prefix[2] << 8) | prefix[3];
        if (n <= sizeof request && read_exactly(conn, request, n) == 0) {
            uint32_t m = n + 5;
            unsigned char head[4] = {(unsigned char)(m >> 24), (unsigned char)(m >> 16), (unsigned char)(m >> 8),
                                     (unsigned char)m};
            memcpy(reply, head, 4);
            memcpy(reply + 4, "echo ", 5);
            memcpy(reply + 9, request, n);
            (void)!write(conn, reply, m + 4);
        }
    }
    close(conn);
    return NULL;
}

/* One connection: announce 100 bytes, send 10, close. */
static void *cut_peer(void *arg) {
    int listener = *(int *)arg;
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) return NULL;
    unsigned char buf[512];
    (void)!read(conn, buf, sizeof buf);
    (void)!write(conn, "\0\0\0\x64only ten..", 14);
    close(conn);
    return NULL;
}

/* One datagram: answer with "1:<request>" and "|2". */
static void *udp_peer(void *arg) {
    int fd = *(int *)arg;
    char buf[512], reply[520];
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    if (n > 0) {
        memcpy(reply, "1:", 2);
        memcpy(reply + 2, buf, (size_t)n);
        (void)!sendto(fd, reply, (size_t)n + 2, 0, (struct sockaddr *)&from, len);
        (void)!sendto(fd, "|2", 2, 0, (struct sockaddr *)&from, len);
    }
    return NULL;
}

static void register_tools(utp_engine_t *engine, int prefix_port, int cut_port, int udp_port) {
    char manual[2048];
    snprintf(manual, sizeof manual,
             "{\"name\": \"sock\", \"tools\": ["
             "{\"name\": \"prefix\", \"tool_call_template\": {\"call_template_type\": \"tcp\", \"host\": \"127.0.0.1\","
             " \"port\": %d, \"framing_strategy\": \"length_prefix\", \"timeout\": 5000}},"
             "{\"name\": \"cut\", \"tool_call_template\": {\"call_template_type\": \"tcp\", \"host\": \"127.0.0.1\","
             " \"port\": %d, \"framing_strategy\": \"length_prefix\", \"timeout\": 5000}},"
             "{\"name\": \"udp\", \"tool_call_template\": {\"call_template_type\": \"udp\", \"host\": \"127.0.0.1\","
             " \"port\": %d, \"number_of_response_datagrams\": 2, \"timeout\": 5000}},"
             "{\"name\": \"bad\", \"tool_call_template\": {\"call_template_type\": \"tcp\", \"host\": \"127.0.0.1\","
             " \"port\": %d, \"framing_strategy\": \"lines\"}},"
             "{\"name\": \"far\", \"tool_call_template\": {\"call_template_type\": \"udp\", \"host\": \"192.0.2.1\","
             " \"port\": 9}}]}",
             prefix_port, cut_port, udp_port, prefix_port);
    char *names = NULL;
    if (ok(utp_register_manual(engine, manual, NULL, &names), "register the socket tools")) {
        utp_string_free(names);
    }
}

int main(void) {
    int prefix_port = 0, cut_port = 0, udp_port = 0;
    int prefix_fd = loopback_socket(SOCK_STREAM, 4, &prefix_port);
    int cut_fd = loopback_socket(SOCK_STREAM, 4, &cut_port);
    int udp_fd = loopback_socket(SOCK_DGRAM, 0, &udp_port);
    if (prefix_fd < 0 || cut_fd < 0 || udp_fd < 0) {
        fprintf(stderr, "cannot open the loopback peers\n");
        return 1;
    }
    pthread_t threads[3];
    pthread_create(&threads[0], NULL, prefix_peer, &prefix_fd);
    pthread_create(&threads[1], NULL, cut_peer, &cut_fd);
    pthread_create(&threads[2], NULL, udp_peer, &udp_fd);

    utp_engine_t *engine = NULL;
    if (ok(utp_engine_new("{}", &engine), "engine_new")) {
        register_tools(engine, prefix_port, cut_port, udp_port);
        char *result = NULL;
        if (ok(utp_call_tool(engine, "sock.prefix", "{\"city\": \"Oslo\", \"n\": 2}", NULL, &result), "tcp call")) {
            CHECK(strcmp(result, "\"echo {\\\"city\\\": \\\"Oslo\\\", \\\"n\\\": 2}\"") == 0, "result %s", result);
            utp_string_free(result);
        }
        result = NULL;
        if (ok(utp_call_tool(engine, "sock.udp", "{\"a\": 1}", NULL, &result), "udp call")) {
            CHECK(strcmp(result, "\"1:{\\\"a\\\": 1}|2\"") == 0, "result %s", result);
            utp_string_free(result);
        }
        utp_error_t *err = utp_call_tool(engine, "sock.cut", "{}", NULL, &result);
        CHECK(err != NULL && find(utp_error_message(err), "mid-frame (10 of 100 bytes)") >= 0, "message %s",
              err ? utp_error_message(err) : "(none)");
        expect_code(err, UTP_ERR_TRANSPORT, "a peer closing mid-frame");
        err = utp_call_tool(engine, "sock.bad", "{}", NULL, &result);
        CHECK(err != NULL && find(utp_error_message(err), "`framing_strategy`") >= 0, "message %s",
              err ? utp_error_message(err) : "(none)");
        expect_code(err, UTP_ERR_INVALID_MANUAL, "a bad template field");
        expect_code(utp_call_tool(engine, "sock.far", "{}", NULL, &result), UTP_ERR_SECURITY, "a host beyond loopback");
        utp_engine_free(engine);
    }
    for (int i = 0; i < 3; i++) pthread_join(threads[i], NULL);
    close(prefix_fd);
    close(cut_fd);
    close(udp_fd);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
