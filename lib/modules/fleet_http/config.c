/*
 * init() configuration: key set and validation of docs/http-bridge.md §2.2 with the
 * defaults of §3.7, plus the optional keys documented in fleet_http.h.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <fleet_protocol/device_management.h>

#include "internal.h"

enum kind { K_TEXT_NAME, K_URL, K_KEY, K_INT, K_TIMEOUT, K_FLAG };

struct key_rule {
    const char *key;
    enum kind kind;
    int required;
    int default_value;
};

/* Sorted by key: the reference checks its sorted map in this order (first failure reported). */
static const struct key_rule RULES[] = {
    {"api_key", K_KEY, 1, 0},
    {"api_url", K_URL, 1, 0},
    {"car_name", K_TEXT_NAME, 1, 0},
    {"circuit_breaker_failures", K_INT, 0, 3},
    {"circuit_breaker_open_ms", K_INT, 0, 5000},
    {"company_name", K_TEXT_NAME, 1, 0},
    {"connect_timeout_ms", K_TIMEOUT, 0, 2000},
    {"delay_after_threshold_reached_ms", K_INT, 0, 500},
    {"max_requests_threshold_count", K_INT, 0, 3},
    {"max_requests_threshold_period_ms", K_INT, 0, 1000},
    {"poll_timeout_ms", K_TIMEOUT, 0, 30000},
    {"retry_requests_delay_ms", K_INT, 0, 220},
    {"status_base64_fallback", K_FLAG, 0, 0},
    {"status_timeout_ms", K_TIMEOUT, 0, 5000},
};
#define N_RULES (sizeof RULES / sizeof RULES[0])

/* First occurrence of key, or NULL. */
static const struct key_value *find(const struct config *in, const char *key)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < in->size; i++) {
        const struct buffer *k = &in->parameters[i].key;
        if (k->data != NULL && k->size_in_bytes == klen && memcmp(k->data, key, klen) == 0)
            return &in->parameters[i];
    }
    return NULL;
}

static int name_chars_ok(const char *s)
{
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static int label_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/*
 * scheme "://" host [":" digits] [path]: host = labels of [A-Za-z0-9_-] separated by single dots.
 * mission: path = ("/" segment)* with non-empty segments and at most one trailing "/";
 * io, transparent: path = "/" followed by any run of segment characters and "/" (empty segments).
 */
int fh_valid_api_url(const char *url)
{
    const char *p;
    if (strncmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        p = url + 8;
    else
        return 0;
    for (;;) { /* labels */
        const char *start = p;
        while (label_char(*p))
            p++;
        if (p == start)
            return 0;
        if (*p != '.')
            break;
        p++;
    }
    if (*p == ':') {
        p++;
        const char *start = p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == start)
            return 0;
    }
    if (*p == '\0')
        return 1;
    if (*p != '/')
        return 0;
#if FLEET_MODULE == 1
    while (*p == '/') {
        p++;
        if (*p == '\0')
            return 1; /* one trailing '/' */
        const char *start = p;
        while (label_char(*p))
            p++;
        if (p == start)
            return 0; /* empty segment */
    }
    return *p == '\0';
#else
    for (; *p != '\0'; p++)
        if (*p != '/' && !label_char(*p))
            return 0;
    return 1;
#endif
}

/*
 * mission: the whole string is an optional '-' and digits that fit an int.
 * io, transparent (std::stoi): leading white space, optional sign, digits, trailing text ignored.
 * Negative results are invalid in all three ("-0" is 0).
 */
static int parse_int(const char *s, int *out)
{
    const char *p = s;
#if FLEET_MODULE == 1
    if (*p == '-')
        p++;
    if (*p == '\0')
        return -1;
    for (const char *q = p; *q != '\0'; q++)
        if (*q < '0' || *q > '9')
            return -1;
    p = s;
#else
    while (isspace((unsigned char)*p))
        p++;
    const char *digits = p;
    if (*digits == '+' || *digits == '-')
        digits++;
    if (*digits < '0' || *digits > '9')
        return -1;
#endif
    errno = 0;
    char *end;
    long v = strtol(p, &end, 10);
    if (errno == ERANGE || v < INT_MIN || v > INT_MAX || end == p)
        return -1;
    if (v < 0)
        return -1;
    *out = (int)v;
    return 0;
}

static char *copy_value(const struct key_value *kv)
{
    const struct buffer *v = &kv->value;
    if (v->data == NULL)
        return fh_strndup("", 0);
    if (memchr(v->data, '\0', v->size_in_bytes) != NULL)
        return NULL;
    return fh_strndup(v->data, v->size_in_bytes);
}

static int *int_slot(struct fh_config *cfg, const char *key)
{
    if (strcmp(key, "circuit_breaker_failures") == 0)
        return &cfg->breaker_failures;
    if (strcmp(key, "circuit_breaker_open_ms") == 0)
        return &cfg->breaker_open_ms;
    if (strcmp(key, "connect_timeout_ms") == 0)
        return &cfg->connect_timeout_ms;
    if (strcmp(key, "delay_after_threshold_reached_ms") == 0)
        return &cfg->threshold_delay_ms;
    if (strcmp(key, "max_requests_threshold_count") == 0)
        return &cfg->threshold_count;
    if (strcmp(key, "max_requests_threshold_period_ms") == 0)
        return &cfg->threshold_period_ms;
    if (strcmp(key, "poll_timeout_ms") == 0)
        return &cfg->poll_timeout_ms;
    if (strcmp(key, "retry_requests_delay_ms") == 0)
        return &cfg->retry_delay_ms;
    if (strcmp(key, "status_base64_fallback") == 0)
        return &cfg->base64_fallback;
    if (strcmp(key, "status_timeout_ms") == 0)
        return &cfg->status_timeout_ms;
    return NULL;
}

void fh_config_free(struct fh_config *cfg)
{
    free(cfg->company);
    free(cfg->car);
    free(cfg->api_url);
    free(cfg->api_key);
    memset(cfg, 0, sizeof *cfg);
}

int fh_config_parse(const struct config *in, struct fh_config *out)
{
    memset(out, 0, sizeof *out);
    if (in->size > 0 && in->parameters == NULL) {
        fh_log(NULL, NULL, "init: configuration has %zu entries but no array", in->size);
        return -1;
    }
    /* Company and car first, for the log prefix of the other messages. */
    const struct key_value *company = find(in, "company_name");
    const struct key_value *car = find(in, "car_name");
    char *company_text = company != NULL ? copy_value(company) : NULL;
    char *car_text = car != NULL ? copy_value(car) : NULL;
    const char *log_company = company_text != NULL ? company_text : "?";
    const char *log_car = car_text != NULL ? car_text : "?";
    int failed = 0;

    for (size_t i = 0; i < N_RULES && !failed; i++) {
        const struct key_rule *rule = &RULES[i];
        const struct key_value *kv = find(in, rule->key);
        if (kv == NULL) {
            if (rule->required) {
                fh_log(log_company, log_car, "init: required key '%s' is missing", rule->key);
                failed = 1;
            } else {
                *int_slot(out, rule->key) = rule->default_value;
            }
            continue;
        }
        char *value = copy_value(kv);
        if (value == NULL) {
            fh_log(log_company, log_car, "init: value of '%s' is not text", rule->key);
            failed = 1;
            continue;
        }
        int ok = 1;
        switch (rule->kind) {
        case K_TEXT_NAME:
            ok = value[0] != '\0' && name_chars_ok(value);
            break;
        case K_KEY:
            ok = value[0] != '\0';
            break;
        case K_URL:
            ok = fh_valid_api_url(value);
            break;
        case K_INT:
        case K_TIMEOUT:
        case K_FLAG: {
            int v;
            ok = parse_int(value, &v) == 0;
            if (ok && rule->kind == K_TIMEOUT && v < 1)
                ok = 0;
            if (ok && rule->kind == K_FLAG && v > 1)
                ok = 0;
            if (ok)
                *int_slot(out, rule->key) = v;
            break;
        }
        }
        if (!ok) {
            fh_log(log_company, log_car, "init: invalid value '%s' for '%s'", value, rule->key);
            free(value);
            failed = 1;
            continue;
        }
        if (rule->kind == K_URL) {
            size_t n = strlen(value);
            while (n > 0 && value[n - 1] == '/')
                value[--n] = '\0';
            out->api_url = value;
        } else if (rule->kind == K_KEY) {
            out->api_key = value;
        } else {
            free(value);
        }
    }
    if (!failed) {
        out->company = company_text;
        out->car = car_text;
        company_text = car_text = NULL;
    }
    free(company_text);
    free(car_text);
#if FLEET_MODULE != 3
    out->base64_fallback = 0;
#endif
    if (failed) {
        fh_config_free(out);
        return -1;
    }
    return 0;
}
