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
    workhost_host *host;
    int called_back;     /* codes of the calls the callback made, checked */
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
    if (id == s->id && strcmp(state, "succeeded") == 0 && !s->called_back) {
        /* The callback may call the library, but not shut its host down. */
        char *json = NULL;
        char *error = NULL;
        int get = workhost_get(s->host, id, &json, &error);
        int shutdown = workhost_shutdown(s->host, &error);
        int freed = workhost_free(s->host);
        printf("from the callback: get %d, shutdown %d (%s), free %d\n", get, shutdown, error, freed);
        s->called_back = (get == WORKHOST_OK && shutdown == WORKHOST_ERR_THREAD && freed == WORKHOST_ERR_THREAD) ? 1 : -1;
        workhost_string_free(json);
        workhost_string_free(error);
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

#define THREADS 4
#define PER_THREAD 10

/* Enqueues PER_THREAD tasks; returns NULL or what failed. */
static void *enqueue_some(void *host) {
    for (int i = 0; i < PER_THREAD; i++) {
        int64_t id = 0;
        if (workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"tags\": [\"threads\"]}", &id,
                             NULL) != WORKHOST_OK) {
            return "enqueue failed";
        }
        char *json = NULL;
        if (workhost_get(host, id, &json, NULL) != WORKHOST_OK) {
            return "get failed";
        }
        workhost_string_free(json);
    }
    return NULL;
}

/* How often `needle` occurs in `text`. */
static int count(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
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
    char *json = NULL;

    struct seen seen = {host, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, "", 0};
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
    if (seen.called_back != 1) {
        fprintf(stderr, "FAIL: the calls from the callback returned other codes\n");
        return 1;
    }

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

    check(workhost_run_once(host, "fail", "greet", NULL, &outcome, &error), error, "run_once fail");
    if (!strstr(outcome, "\"outcome\":\"failed\"")) {
        fprintf(stderr, "FAIL: outcome of fail %s\n", outcome);
        return 1;
    }
    printf("run once of a failing handler: failed, as data\n");
    workhost_string_free(outcome);

    /* One handle, several threads at once. */
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_create(&threads[i], NULL, enqueue_some, host);
    }
    for (int i = 0; i < THREADS; i++) {
        void *result = NULL;
        pthread_join(threads[i], &result);
        if (result != NULL) {
            fprintf(stderr, "FAIL: thread %d: %s\n", i, (char *)result);
            return 1;
        }
    }
    for (int tries = 0;; tries++) {
        check(workhost_list(host, "{\"tag\": \"threads\", \"state\": \"succeeded\"}", &json, &error), error,
              "list threads");
        int done = count(json, "\"id\":");
        workhost_string_free(json);
        if (done == THREADS * PER_THREAD) {
            break;
        }
        if (tries == 1200) {
            fprintf(stderr, "FAIL: %d of %d tasks from threads succeeded\n", done, THREADS * PER_THREAD);
            return 1;
        }
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    printf("%d tasks enqueued from %d threads succeeded\n", THREADS * PER_THREAD, THREADS);

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
