/* An instant model server for the pinned benchmark (hack/bench/pinned.py): answers every completion at
 * once, so the core it shares with the proxy under test goes to the proxy, not to the backend.
 *
 *   instant_backend [--sse N] [--sse-gap-us G] PORT [PORT...]      (binds 127.0.0.1:PORT for each)
 *
 * One thread, epoll, keep-alive HTTP/1.1. Request bodies of any size are consumed as they arrive,
 * Content-Length or chunked (Envoy re-chunks a body that ext_proc streamed), and never stored.
 *   GET /metrics  vLLM gauge names, all 0 (what epp scrapes)
 *   GET /health   {}
 *   GET /stats    {"completions": n, "render": n, "metrics": n, "health": n}: requests served so far (a
 *                 tokenizing router's /render or /tokenize calls counted apart, answered as completions)
 *   anything else an OpenAI-shaped completion with a `usage` object; with --sse N, a text/event-stream
 *                 of N `data:` chunks (the last one carries `usage`) and `data: [DONE]`, chunked, one
 *                 chunk every G microseconds (default 100): a real server's tokens reach the proxy one
 *                 by one, so each is its own read (and ext_proc message) in the proxy, not one
 *                 coalesced burst.
 * Compiled at run time by the benchmark (gcc -O2); no dependency beyond libc. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define RBUF (64 * 1024)
#define MAXHEAD (64 * 1024)

enum state { HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS };

struct conn {
    enum state st;
    char in[MAXHEAD];          /* unparsed bytes: a partial head or chunk-size line */
    size_t in_len;
    long long body_left;       /* BODY / CHUNK_DATA: bytes still to skip */
    long long body_len;        /* the request's body so far (for usage.prompt_tokens) */
    int is_metrics, is_health, is_stats, is_render;
    char *out;                 /* bytes not yet accepted by the socket */
    size_t out_len, out_cap, out_off;
    int sse_left;              /* SSE chunks still to send; 0: not streaming */
    long long sse_due_ns;
};

static struct conn *conns[MAXFD];
static int listeners[MAXFD];
static int ep, tfd, sse_n = 0;
static long long sse_gap_ns = 100000;
static int maxfd = 0;
static long long n_completions, n_render, n_metrics, n_health;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void out_add(struct conn *c, const char *p, size_t n) {
    if (c->out_len + n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) abort();
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void out_fmt(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct conn *c, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out_add(c, buf, (size_t)n);
}

static void out_chunk(struct conn *c, const char *data) {
    out_fmt(c, "%zx\r\n%s\r\n", strlen(data), data);
}

static void close_conn(int fd) {
    struct conn *c = conns[fd];
    if (c) {
        free(c->out);
        free(c);
        conns[fd] = NULL;
    }
    close(fd);
}

/* writes what the socket takes now; EPOLLOUT only while something is left over */
static int flush(int fd) {
    struct conn *c = conns[fd];
    while (c->out_off < c->out_len) {
        ssize_t n = write(fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    int pending = c->out_off < c->out_len;
    if (!pending) c->out_off = c->out_len = 0;
    struct epoll_event ev = {.events = EPOLLIN | (pending ? EPOLLOUT : 0), .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return 0;
}

static void arm_timer(void) {
    long long due = 0;
    for (int fd = 0; fd <= maxfd; fd++)
        if (conns[fd] && conns[fd]->sse_left && (!due || conns[fd]->sse_due_ns < due)) due = conns[fd]->sse_due_ns;
    struct itimerspec it = {0};
    if (due) {
        it.it_value.tv_sec = due / 1000000000LL;
        it.it_value.tv_nsec = due % 1000000000LL;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

static const char SSE_TOKEN[] =
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"text\":\" tok\",\"logprobs\":null,\"finish_reason\":null}]}\n\n";

static void sse_step(struct conn *c) {
    char ev[512];
    c->sse_left--;
    if (c->sse_left > 0) {
        out_chunk(c, SSE_TOKEN);
        c->sse_due_ns += sse_gap_ns;
        return;
    }
    long long p = c->body_len / 4 + 1;
    snprintf(ev, sizeof ev,
             "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\",\"choices\":[],"
             "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%d,\"total_tokens\":%lld}}\n\n",
             p, sse_n, p + sse_n);
    out_chunk(c, ev);
    out_chunk(c, "data: [DONE]\n\n");
    out_add(c, "0\r\n\r\n", 5);
}

static void respond(struct conn *c) {
    char body[512];
    if (c->is_stats) {
        char s[256];
        int n = snprintf(s, sizeof s, "{\"completions\": %lld, \"render\": %lld, \"metrics\": %lld, \"health\": %lld}",
                         n_completions, n_render, n_metrics, n_health);
        out_fmt(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s", n, s);
        return;
    }
    if (c->is_metrics) {
        n_metrics++;
        const char *m =
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 0\n"
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\"} 0\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0\n";
        out_fmt(c, "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: %zu\r\n\r\n%s",
                strlen(m), m);
        return;
    }
    if (c->is_health) {
        n_health++;
        out_fmt(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
        return;
    }
    if (c->is_render) n_render++;
    else n_completions++;
    if (sse_n > 0 && !c->is_render) {
        out_fmt(c, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        c->sse_left = sse_n;
        c->sse_due_ns = now_ns();
        sse_step(c);   /* the first chunk at once, the others on the timer */
        return;
    }
    long long p = c->body_len / 4 + 1;
    int n = snprintf(body, sizeof body,
                     "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\","
                     "\"choices\":[{\"index\":0,\"text\":\"ok\",\"logprobs\":null,\"finish_reason\":\"length\"}],"
                     "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":1,\"total_tokens\":%lld}}",
                     p, p + 1);
    out_fmt(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s", n, body);
}

/* the head is in c->in[0..end): method, path, and how the body is framed */
static void parse_head(struct conn *c, size_t end) {
    char *p = c->in, *stop = c->in + end;
    char *sp = memchr(p, ' ', (size_t)(stop - p));
    char *path = sp ? sp + 1 : p;
    c->is_metrics = !strncmp(path, "/metrics", 8);
    c->is_health = !strncmp(path, "/health", 7);
    c->is_stats = !strncmp(path, "/stats", 6);
    char *eop = memchr(path, ' ', (size_t)(stop - path));
    size_t plen = eop ? (size_t)(eop - path) : 0;
    c->is_render = memmem(path, plen, "/render", 7) || memmem(path, plen, "/tokenize", 9);
    c->body_left = 0;
    c->body_len = 0;
    c->st = HEAD;
    for (char *line = memchr(p, '\n', (size_t)(stop - p)); line && line + 1 < stop;
         line = memchr(line + 1, '\n', (size_t)(stop - line - 1))) {
        char *h = line + 1;
        if (!strncasecmp(h, "content-length:", 15)) {
            c->body_left = strtoll(h + 15, NULL, 10);
            c->st = BODY;
        } else if (!strncasecmp(h, "transfer-encoding:", 18)) {
            char *eol = memchr(h, '\r', (size_t)(stop - h));
            if (eol && memmem(h, (size_t)(eol - h), "chunked", 7)) c->st = CHUNK_SIZE;
        }
    }
}

/* consumes n bytes of input; returns -1 on a protocol error */
static int feed(int fd, const char *data, size_t n) {
    struct conn *c = conns[fd];
    while (n > 0 || (c->st == BODY && c->body_left == 0)) {
        if (c->sse_left) {   /* no pipelining behind a stream: keep the bytes for later */
            if (c->in_len + n > sizeof c->in) return -1;
            memcpy(c->in + c->in_len, data, n);
            c->in_len += n;
            return 0;
        }
        if ((c->st == BODY || c->st == CHUNK_DATA) && c->body_left > 0) {
            size_t take = (size_t)c->body_left < n ? (size_t)c->body_left : n;
            c->body_left -= (long long)take;
            c->body_len += (long long)take;
            data += take;
            n -= take;
            if (c->st == CHUNK_DATA && c->body_left == 0) c->st = CHUNK_END;
            continue;
        }
        if (c->st == BODY) {  /* body_left == 0: the request is complete */
            respond(c);
            c->st = HEAD;
            continue;
        }
        /* line-oriented states: accumulate up to the next \n */
        const char *nl = memchr(data, '\n', n);
        size_t take = nl ? (size_t)(nl - data) + 1 : n;
        if (c->in_len + take > sizeof c->in) return -1;
        memcpy(c->in + c->in_len, data, take);
        c->in_len += take;
        data += take;
        n -= take;
        if (!nl) break;
        size_t len = c->in_len;
        switch (c->st) {
        case HEAD:
            if (len >= 4 && !memcmp(c->in + len - 4, "\r\n\r\n", 4)) {
                parse_head(c, len);
                c->in_len = 0;
                if (c->st == HEAD) { respond(c); }   /* no body */
            }
            continue;   /* a head line: keep accumulating */
        case CHUNK_SIZE:
            c->body_left = strtoll(c->in, NULL, 16);
            c->st = c->body_left ? CHUNK_DATA : TRAILERS;
            break;
        case CHUNK_END:       /* the CRLF after a chunk's data */
            c->st = CHUNK_SIZE;
            break;
        case TRAILERS:        /* until an empty line */
            if (len <= 2) {
                respond(c);
                c->st = HEAD;
            }
            break;
        default:
            return -1;
        }
        c->in_len = 0;
    }
    return 0;
}

static void on_readable(int fd) {
    static char buf[RBUF];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { close_conn(fd); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (feed(fd, buf, (size_t)n) < 0) { close_conn(fd); return; }
        if (n < (ssize_t)sizeof buf) break;
    }
    if (flush(fd) < 0) { close_conn(fd); return; }
    if (conns[fd]->sse_left) arm_timer();
}

static void on_timer(void) {
    uint64_t ticks;
    if (read(tfd, &ticks, sizeof ticks) < 0) { /* spurious: re-armed below */ }
    long long now = now_ns();
    for (int fd = 0; fd <= maxfd; fd++) {
        struct conn *c = conns[fd];
        if (!c || !c->sse_left || c->sse_due_ns > now) continue;
        sse_step(c);
        if (!c->sse_left && c->in_len && c->st == HEAD) {   /* bytes that arrived during the stream */
            char held[MAXHEAD];
            size_t n = c->in_len;
            memcpy(held, c->in, n);
            c->in_len = 0;
            if (feed(fd, held, n) < 0) { close_conn(fd); continue; }
        }
        if (flush(fd) < 0) close_conn(fd);
    }
    arm_timer();
}

static int listen_on(int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 1024) < 0) {
        perror("listen");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    int ports = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sse") && i + 1 < argc) sse_n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sse-gap-us") && i + 1 < argc) sse_gap_ns = atoll(argv[++i]) * 1000LL;
        else {
            int s = listen_on(atoi(argv[i]));
            listeners[s] = 1;
            ev.data.fd = s;
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
            ports++;
        }
    }
    if (!ports) {
        fprintf(stderr, "usage: %s [--sse N] [--sse-gap-us G] PORT [PORT...]\n", argv[0]);
        return 2;
    }
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == tfd) { on_timer(); continue; }
            if (listeners[fd]) {
                int c;
                while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c] = calloc(1, sizeof(struct conn));
                    if (c > maxfd) maxfd = c;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (!conns[fd]) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
            else if (evs[i].events & EPOLLOUT) {
                if (flush(fd) < 0) close_conn(fd);
            }
        }
    }
}
