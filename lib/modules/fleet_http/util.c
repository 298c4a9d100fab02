/* Small helpers: clocks, strings, URL escaping, base64 and logging. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define LOG_REPEAT_REPORT_MS 30000

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fh_now_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

int64_t fh_wall_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

char *fh_strndup(const char *s, size_t n)
{
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return NULL;
    if (n > 0)
        memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

char *fh_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *out = malloc((size_t)n + 1);
    if (out == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return out;
}

char *fh_url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 1);
    if (out == NULL)
        return NULL;
    char *w = out;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
            c == '_' || c == '.' || c == '~') {
            *w++ = (char)c;
        } else {
            *w++ = '%';
            *w++ = hex[c >> 4];
            *w++ = hex[c & 15];
        }
    }
    *w = '\0';
    return out;
}

char *fh_base64(const unsigned char *data, size_t len)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out_len = (len + 2) / 3 * 4;
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;
    size_t i = 0;
    char *w = out;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *w++ = alphabet[v >> 18 & 63];
        *w++ = alphabet[v >> 12 & 63];
        *w++ = alphabet[v >> 6 & 63];
        *w++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        *w++ = alphabet[v >> 18 & 63];
        *w++ = alphabet[v >> 12 & 63];
        *w++ = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        *w++ = '=';
    }
    *w = '\0';
    return out;
}

void fh_log(const char *company, const char *car, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line: stdio locks the stream, so lines of several threads do not mix. */
    fprintf(stderr, "fleet_http[%s] %s/%s: %s\n", FH_MODULE_NAME, company ? company : "?", car ? car : "?",
            line);
}

void fh_log_event(struct fh_logstate *st, const char *company, const char *car, const char *message,
                  const char *recovered)
{
    int64_t now = fh_now_ms();
    if (message != NULL && st->last[0] != '\0' && strncmp(st->last, message, sizeof st->last - 1) == 0) {
        st->repeats++;
        if (now - st->since_ms >= LOG_REPEAT_REPORT_MS) {
            fh_log(company, car, "%s (repeated %llu times in %lld s)", st->last,
                   (unsigned long long)st->repeats, (long long)((now - st->since_ms) / 1000));
            st->repeats = 0;
            st->since_ms = now;
        }
        return;
    }
    if (st->last[0] != '\0' && st->repeats > 0)
        fh_log(company, car, "%s (repeated %llu more times)", st->last, (unsigned long long)st->repeats);
    if (message == NULL) {
        if (st->last[0] != '\0' && recovered != NULL)
            fh_log(company, car, "%s", recovered);
        st->last[0] = '\0';
    } else {
        fh_log(company, car, "%s", message);
        snprintf(st->last, sizeof st->last, "%s", message);
        st->since_ms = now;
    }
    st->repeats = 0;
}
