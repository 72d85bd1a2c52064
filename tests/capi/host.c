/*
 * A C program that embeds workhost through its header: opens a host from a
 * manifest, enqueues, waits for the callback to report success, reads the
 * task, runs a handler once, cancels, shuts down and frees.
 * Usage: host <manifest>. Prints one line per step; exits 0 when all pass.
 * Built and run by tests/all/capi.rs.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workhost.h"

/* What the callback saw, shared with the main thread. */
struct seen {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int64_t id;          /* the task watched */
    char state[32];      /* its latest state */
    int events;          /* events seen, of any task */
};

static void on_change(void *user_data, int64_t id, const char *state, const char *event) {
    struct seen *s = user_data;
    pthread_mutex_lock(&s->lock);
    s->events++;
    if (id == s->id) {
        snprintf(s->state, sizeof s->state, "%s", state);
    }
    printf("callback: task %lld %s (%s)\n", (long long)id, state, event);
    fflush(stdout);
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

/* Fails the program with the call's code and message. */
static void check(int code, char *error, const char *what) {
    if (code != WORKHOST_OK) {
        fprintf(stderr, "FAIL %s: code %d (%s): %s\n", what, code, workhost_error_message(code),
                error ? error : "(no message)");
        workhost_string_free(error);
        exit(1);
    }
}

/* Waits up to 60 s until the watched task is in `state`. */
static void wait_for(struct seen *s, const char *state) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    pthread_mutex_lock(&s->lock);
    while (strcmp(s->state, state) != 0) {
        if (pthread_cond_timedwait(&s->changed, &s->lock, &deadline) != 0) {
            fprintf(stderr, "FAIL: task %lld never became %s (last: %s)\n", (long long)s->id, state, s->state);
            exit(1);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

static void watch(struct seen *s, int64_t id) {
    pthread_mutex_lock(&s->lock);
    s->id = id;
    s->state[0] = '\0';
    pthread_mutex_unlock(&s->lock);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: host <manifest>\n");
        return 2;
    }
    char *error = NULL;
    printf("version %s\n", workhost_version());

    workhost_host *host = NULL;
    check(workhost_open_path(argv[1], &host, &error), error, "open");

    struct seen seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, "", 0};
    check(workhost_set_callback(host, on_change, &seen, &error), error, "set_callback");

    /* The id is known only when enqueue returns, and the callback may
     * report success before: watch id 1 (a fresh store's first task). */
    watch(&seen, 1);
    int64_t id = 0;
    check(workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"greet\", \"input\": {\"name\": \"c\"}}", &id,
                           &error),
          error, "enqueue");
    if (id != 1) {
        fprintf(stderr, "FAIL: the first task has id %lld\n", (long long)id);
        return 1;
    }
    wait_for(&seen, "succeeded");
    printf("succeeded by callback\n");

    char *json = NULL;
    check(workhost_get(host, id, &json, &error), error, "get");
    if (!strstr(json, "\"state\":\"succeeded\"") || !strstr(json, "\"output\":{\"name\":\"c\"")) {
        fprintf(stderr, "FAIL: task json %s\n", json);
        return 1;
    }
    printf("task json has the output\n");
    workhost_string_free(json);

    check(workhost_list(host, "{\"state\": \"succeeded\"}", &json, &error), error, "list");
    if (!strstr(json, "\"id\":1,")) {
        fprintf(stderr, "FAIL: list %s\n", json);
        return 1;
    }
    printf("listed\n");
    workhost_string_free(json);

    char *outcome = NULL;
    check(workhost_run_once(host, "echo", "greet", "{\"name\": \"once\"}", &outcome, &error), error, "run_once");
    if (!strstr(outcome, "\"outcome\":\"success\"") || !strstr(outcome, "\"name\":\"once\"")) {
        fprintf(stderr, "FAIL: outcome %s\n", outcome);
        return 1;
    }
    printf("run once: success\n");
    workhost_string_free(outcome);

    int64_t later = 0;
    check(workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"later\", \"delay\": \"1h\"}", &later, &error),
          error, "enqueue later");
    watch(&seen, later);
    check(workhost_cancel(host, later, &error), error, "cancel");
    wait_for(&seen, "cancelled");
    check(workhost_get(host, later, &json, &error), error, "get cancelled");
    if (!strstr(json, "\"state\":\"cancelled\"")) {
        fprintf(stderr, "FAIL: cancelled task %s\n", json);
        return 1;
    }
    workhost_string_free(json);
    printf("cancelled\n");

    check(workhost_pause(host, &error), error, "pause");
    check(workhost_resume(host, &error), error, "resume");

    check(workhost_shutdown(host, &error), error, "shutdown");
    int code = workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\"}", &id, &error);
    printf("after shutdown: %d (%s)\n", code, error);
    workhost_string_free(error);
    if (code != WORKHOST_ERR_SHUTDOWN) {
        return 1;
    }
    check(workhost_free(host), NULL, "free");
    printf("ok\n");
    return 0;
}
