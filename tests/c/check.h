/* Test helpers shared by the C tests: counters, CHECK, ok(), expect_code(), find(), and
 * count_of(), json_str(), json_num() for reading compact JSON results. */
#ifndef UTP_TEST_CHECK_H
#define UTP_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utp.h"

static int passed = 0;
static int failed = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) {                                                       \
            passed++;                                                     \
        } else {                                                          \
            failed++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* Check that `err` is NULL (success); print and free it otherwise. */
static int ok(utp_error_t *err, const char *what) {
    if (err == NULL) {
        passed++;
        return 1;
    }
    failed++;
    fprintf(stderr, "FAIL %s: error %d: %s\n", what, (int)utp_error_code(err), utp_error_message(err));
    utp_error_free(err);
    return 0;
}

/* Check that `err` carries `code` and a non-empty message; always frees it. */
static void expect_code(utp_error_t *err, int32_t code, const char *what) {
    if (err == NULL) {
        failed++;
        fprintf(stderr, "FAIL %s: expected error %d, got success\n", what, (int)code);
        return;
    }
    if (utp_error_code(err) == code && utp_error_message(err) != NULL && utp_error_message(err)[0] != '\0') {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s: expected error %d, got %d: %s\n", what, (int)code, (int)utp_error_code(err),
                utp_error_message(err));
    }
    utp_error_free(err);
}

/* Position of `needle` in `hay`, or -1. */
static long find(const char *hay, const char *needle) {
    const char *p = (hay != NULL) ? strstr(hay, needle) : NULL;
    return p ? (long)(p - hay) : -1;
}

/* Occurrences of `needle` in `hay` (0 when `hay` is NULL). */
static inline int count_of(const char *hay, const char *needle) {
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay ? strstr(hay, needle) : NULL; p != NULL; p = strstr(p + len, needle)) n++;
    return n;
}

/* Copy the string value of "key":"..." in compact JSON into buf (empty if absent or null). */
static inline const char *json_str(const char *json, const char *key, char *buf, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    buf[0] = '\0';
    const char *p = json ? strstr(json, pattern) : NULL;
    if (p == NULL) return buf;
    p += strlen(pattern);
    size_t n = 0;
    while (p[n] != '\0' && p[n] != '"' && n + 1 < size) n++;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

/* The number after "key": in compact JSON; -1 if absent. */
static inline long json_num(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    return p ? strtol(p + strlen(pattern), NULL, 10) : -1;
}

#endif
