/*
 * libcurl wrappers. Every context owns two easy handles (one for status POSTs
 * in the caller's thread, one for the poller thread) so no handle is ever
 * shared between threads (§3.8). The poller's requests run through a multi
 * handle, which lets destroy() cancel an in-flight long poll at once with
 * curl_multi_wakeup() (§3.3).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_BODY_BYTES (64u * 1024u * 1024u)
#define MULTI_POLL_SLICE_MS 1000

void fh_response_reset(struct fh_response *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct fh_response *r = userdata;
    size_t n = size * nmemb;
    if (n == 0)
        return 0;
    if (r->len + n > MAX_BODY_BYTES)
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    char *grown = realloc(r->body, r->len + n + 1);
    if (grown == NULL)
        return 0;
    memcpy(grown + r->len, ptr, n);
    r->len += n;
    grown[r->len] = '\0';
    r->body = grown;
    return n;
}

CURL *fh_handle_new(const struct fh_config *cfg, struct curl_slist *headers)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    int bad = 0;
    bad |= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK; /* threads: no SIGALRM */
    bad |= curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->connect_timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers) != CURLE_OK;
    bad |= curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data) != CURLE_OK;
    bad |= curl_easy_setopt(h, CURLOPT_USERAGENT, "fleet_http/" FH_MODULE_NAME) != CURLE_OK;
    bad |= curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    if (bad) {
        curl_easy_cleanup(h);
        return NULL;
    }
    return h;
}

static void prepare(CURL *h, const char *url, const char *body, long timeout_ms, struct fh_response *out)
{
    fh_response_reset(out);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, out->error);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 1L);
    if (body != NULL) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
}

static void finish(CURL *h, CURLcode rc, struct fh_response *out)
{
    out->curl = rc;
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    out->status = status;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
}

void fh_perform(CURL *handle, const char *url, const char *body, long timeout_ms, struct fh_response *out)
{
    prepare(handle, url, body, timeout_ms, out);
    CURLcode rc = curl_easy_perform(handle);
    finish(handle, rc, out);
}

void fh_perform_abortable(CURLM *multi, CURL *handle, const char *url, long timeout_ms, atomic_int *stop,
                          struct fh_response *out)
{
    prepare(handle, url, NULL, timeout_ms, out);
    if (curl_multi_add_handle(multi, handle) != CURLM_OK) {
        finish(handle, CURLE_FAILED_INIT, out);
        return;
    }
    CURLcode rc = CURLE_FAILED_INIT;
    int done = 0;
    while (!done) {
        if (atomic_load(stop)) {
            out->aborted = 1;
            rc = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        int running = 0;
        if (curl_multi_perform(multi, &running) != CURLM_OK)
            break;
        int left;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == handle) {
                rc = msg->data.result;
                done = 1;
            }
        }
        if (done || running == 0)
            break;
        /* Returns on socket activity, after the slice, or at once on curl_multi_wakeup(). */
        if (curl_multi_poll(multi, NULL, 0, MULTI_POLL_SLICE_MS, NULL) != CURLM_OK)
            break;
    }
    curl_multi_remove_handle(multi, handle);
    finish(handle, rc, out);
}

int fh_transient(const struct fh_response *r)
{
    if (r->curl != CURLE_OK)
        return 1;
    return r->status >= 500 || r->status == 0;
}

void fh_describe(const struct fh_response *r, char *buf, size_t size)
{
    if (r->curl != CURLE_OK) {
        snprintf(buf, size, "curl error %d: %s", (int)r->curl,
                 r->error[0] != '\0' ? r->error : curl_easy_strerror(r->curl));
        return;
    }
    char excerpt[121];
    size_t n = 0;
    if (r->body != NULL) {
        for (; n < r->len && n < sizeof excerpt - 1; n++) {
            char c = r->body[n];
            excerpt[n] = (c >= 32 && c < 127) ? c : ' ';
        }
    }
    excerpt[n] = '\0';
    snprintf(buf, size, "HTTP %ld: %s", r->status, excerpt);
}
