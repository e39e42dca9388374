#include "dist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DIST_MAGIC "GPSDDIST"
#define DIST_VERSION 1u
#define DEFAULT_PORT 29500

enum { CONN_DATA = 0, CONN_CONTROL = 1 };

typedef struct {
    char magic[8];
    uint32_t version, kind;
    int32_t rank, world;
} hello_msg;

struct dist_ctx {
    int rank, world, local_rank, local_world;
    double timeout_s;
    int *data_fd, *ctl_fd; /* rank 0: [world] by peer rank; others: [1], to rank 0 */
    pthread_t monitor;
    int monitor_running;
    atomic_int finishing;
    void (*abort_hook)(void *);
    void *abort_arg;
};

/* ---- environment ---------------------------------------------------------------------- */

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

static int env_int(const char *name, int *out, int lo, gp_err *e)
{
    const char *v = env(name);
    int64_t x;
    if (!v)
        return 1;
    if (gp_parse_i64(v, &x) != 0 || x < lo || x > (1 << 30))
        return gp_fail(e, "environment variable %s=\"%s\" is not an integer >= %d", name, v, lo);
    *out = (int)x;
    return 0;
}

int dist_slurm_first_host(const char *nodelist, char *out, size_t n)
{
    if (!nodelist || !nodelist[0] || n == 0)
        return -1;
    size_t i = 0, o = 0;
    /* the prefix up to the first ',' or '[' */
    while (nodelist[i] && nodelist[i] != ',' && nodelist[i] != '[') {
        if (o + 1 < n)
            out[o++] = nodelist[i];
        i++;
    }
    if (nodelist[i] == '[') {
        i++;
        /* the first number of the first range, zero padding kept */
        while (nodelist[i] && nodelist[i] != '-' && nodelist[i] != ',' && nodelist[i] != ']') {
            if (o + 1 < n)
                out[o++] = nodelist[i];
            i++;
        }
        if (!nodelist[i])
            return -1;
    }
    out[o] = 0;
    return o > 0 ? 0 : -1;
}

int dist_env_present(void)
{
    return (env("RANK") && env("WORLD_SIZE")) || env("OMPI_COMM_WORLD_RANK") || env("PMI_RANK") ||
           (env("SLURM_PROCID") && (env("SLURM_STEP_ID") || env("SLURM_STEPID")));
}

int dist_env_detect(dist_env *de, gp_err *e)
{
    memset(de, 0, sizeof *de);
    de->world = de->local_world = 1;
    snprintf(de->source, sizeof de->source, "single");
    const char *rank_var, *world_var, *local_var, *local_world_var;
    if (env("RANK") && env("WORLD_SIZE")) {
        snprintf(de->source, sizeof de->source, "%s", env("GPSDREC_LAUNCHER") ? "gpsdrec" : "torchrun");
        rank_var = "RANK", world_var = "WORLD_SIZE", local_var = "LOCAL_RANK", local_world_var = "LOCAL_WORLD_SIZE";
    } else if (env("OMPI_COMM_WORLD_RANK")) {
        snprintf(de->source, sizeof de->source, "mpirun");
        rank_var = "OMPI_COMM_WORLD_RANK", world_var = "OMPI_COMM_WORLD_SIZE";
        local_var = "OMPI_COMM_WORLD_LOCAL_RANK", local_world_var = "OMPI_COMM_WORLD_LOCAL_SIZE";
    } else if (env("PMI_RANK")) {
        snprintf(de->source, sizeof de->source, "mpirun");
        rank_var = "PMI_RANK", world_var = "PMI_SIZE", local_var = "MPI_LOCALRANKID", local_world_var = "MPI_LOCALNRANKS";
    } else if (env("SLURM_PROCID") && (env("SLURM_STEP_ID") || env("SLURM_STEPID"))) {
        snprintf(de->source, sizeof de->source, "slurm");
        rank_var = "SLURM_PROCID", world_var = "SLURM_NTASKS", local_var = "SLURM_LOCALID";
        local_world_var = "SLURM_NTASKS_PER_NODE";
    } else {
        return 0;
    }
    int rc;
    if ((rc = env_int(world_var, &de->world, 1, e)) != 0)
        return rc < 0 ? -1 : gp_fail(e, "%s is set but %s is not (launcher %s)", rank_var, world_var, de->source);
    if ((rc = env_int(rank_var, &de->rank, 0, e)) < 0)
        return -1;
    if (de->rank >= de->world)
        return gp_fail(e, "%s=%d is not below %s=%d", rank_var, de->rank, world_var, de->world);
    de->local_rank = de->rank;
    if (env_int(local_var, &de->local_rank, 0, e) < 0)
        return -1;
    de->local_world = de->world;
    /* Slurm writes SLURM_TASKS_PER_NODE as "4(x2),3"; the first count is this layout's widest. */
    if (strcmp(de->source, "slurm") == 0 && !env(local_world_var) && env("SLURM_TASKS_PER_NODE"))
        de->local_world = atoi(env("SLURM_TASKS_PER_NODE"));
    else if (env_int(local_world_var, &de->local_world, 1, e) < 0)
        return -1;
    if (de->local_world < 1)
        de->local_world = 1;
    if (de->local_rank >= de->local_world && env(local_world_var))
        return gp_fail(e, "%s=%d is not below %s=%d", local_var, de->local_rank, local_world_var, de->local_world);

    const char *addr = env("MASTER_ADDR");
    char first[256];
    if (!addr && strcmp(de->source, "slurm") == 0) {
        const char *nl = env("SLURM_STEP_NODELIST") ? env("SLURM_STEP_NODELIST") : env("SLURM_JOB_NODELIST");
        if (nl && dist_slurm_first_host(nl, first, sizeof first) == 0)
            addr = first;
    }
    if (!addr) {
        if (de->world > 1 && de->local_world < de->world)
            return gp_fail(e, "%d ranks over several nodes (launcher %s) need MASTER_ADDR: the host name of rank 0's "
                              "node (e.g. mpirun -x MASTER_ADDR=node01)",
                           de->world, de->source);
        addr = "127.0.0.1";
    }
    snprintf(de->master_addr, sizeof de->master_addr, "%s", addr);
    de->master_port = DEFAULT_PORT;
    /* Slurm jobs sharing a node get distinct default ports. */
    if (strcmp(de->source, "slurm") == 0 && env("SLURM_JOB_ID"))
        de->master_port = 20000 + atoi(env("SLURM_JOB_ID")) % 20000;
    if ((rc = env_int("MASTER_PORT", &de->master_port, 1, e)) < 0)
        return -1;
    if (de->master_port > 65535)
        return gp_fail(e, "MASTER_PORT=%d is not a TCP port", de->master_port);
    return 0;
}

/* ---- sockets --------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Waits for fd to be readable/writable within the group's timeout. */
static int wait_fd(const dist_ctx *d, int fd, short events, int peer, const char *what, gp_err *e)
{
    double deadline = now_s() + d->timeout_s;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        double left = deadline - now_s();
        if (left <= 0)
            return gp_fail(e, "rank %d: no progress from rank %d within %.0f s while %s (dist_timeout)", d->rank, peer,
                           d->timeout_s, what);
        int r = poll(&p, 1, (int)GP_MIN(left * 1000.0 + 1, 1000.0));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return gp_fail(e, "rank %d: poll failed while %s: %s", d->rank, what, strerror(errno));
    }
}

static int send_all(const dist_ctx *d, int fd, const void *buf, size_t n, int peer, gp_err *e)
{
    const char *p = buf;
    while (n > 0) {
        if (wait_fd(d, fd, POLLOUT, peer, "sending", e) != 0)
            return -1;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return gp_fail(e, "rank %d: sending to rank %d failed: %s (did it stop?)", d->rank, peer, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int recv_all(const dist_ctx *d, int fd, void *buf, size_t n, int peer, gp_err *e)
{
    char *p = buf;
    while (n > 0) {
        if (wait_fd(d, fd, POLLIN, peer, "receiving", e) != 0)
            return -1;
        ssize_t r = recv(fd, p, n, 0);
        if (r == 0)
            return gp_fail(e, "rank %d: rank %d closed its connection (did it stop?)", d->rank, peer);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return gp_fail(e, "rank %d: receiving from rank %d failed: %s", d->rank, peer, strerror(errno));
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void tune_socket(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int listen_on(int port, gp_err *e)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    int v6 = fd >= 0;
    if (!v6)
        fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return gp_fail(e, "cannot create a socket: %s", strerror(errno));
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (v6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (rc != 0 || listen(fd, 256) != 0) {
        int err = errno;
        close(fd);
        return gp_fail(e, "rank 0 cannot listen on port %d: %s%s", port, strerror(err),
                       err == EADDRINUSE ? " (another job uses it: set MASTER_PORT)" : "");
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int connect_to(const dist_env *de, double deadline, gp_err *e)
{
    char port[16];
    snprintf(port, sizeof port, "%d", de->master_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    const char *last = "no attempt";
    for (;;) {
        int g = getaddrinfo(de->master_addr, port, &hints, &res);
        if (g == 0) {
            for (struct addrinfo *a = res; a; a = a->ai_next) {
                int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
                if (fd < 0)
                    continue;
                if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
                    freeaddrinfo(res);
                    return fd;
                }
                last = strerror(errno);
                close(fd);
            }
            freeaddrinfo(res);
            res = NULL;
        } else {
            last = gai_strerror(g);
        }
        if (now_s() > deadline)
            return gp_fail(e, "rank %d: cannot reach rank 0 at %s:%d (%s) within the timeout", de->rank, de->master_addr,
                           de->master_port, last);
        usleep(100 * 1000);
    }
}

/* ---- monitor ----------------------------------------------------------------------------- */

static void die_for_peer(dist_ctx *d, const char *why)
{
    fprintf(stderr, "gpsdrec [rank %d]: stopping because %s\n", d->rank, why);
    fflush(stderr);
    if (d->abort_hook)
        d->abort_hook(d->abort_arg);
    _exit(DIST_EXIT_PEER);
}

/* An abort message: 'A', u32 length, text. */
static void send_abort(int fd, const char *text)
{
    uint32_t n = (uint32_t)strlen(text);
    char buf[1 + 4 + 1024];
    if (n > 1024)
        n = 1024;
    buf[0] = 'A';
    memcpy(buf + 1, &n, 4);
    memcpy(buf + 5, text, n);
    ssize_t w = send(fd, buf, 5 + n, MSG_NOSIGNAL);
    (void)w;
}

/* Reads what a control connection says: 1 = an abort text in `why`, 0 = closed, -1 = nothing. */
static int read_control(int fd, char *why, size_t n)
{
    char head[5];
    ssize_t r = recv(fd, head, 5, MSG_PEEK);
    if (r == 0)
        return 0;
    if (r < 0)
        return errno == EAGAIN || errno == EINTR ? -1 : 0;
    if (r < 5 || head[0] != 'A')
        return r < 5 && head[0] == 'A' ? -1 : 0;
    uint32_t len;
    memcpy(&len, head + 1, 4);
    if (len > 1024)
        len = 1024;
    char buf[5 + 1024];
    /* The text follows the header at once; wait briefly for it. */
    for (int tries = 0; tries < 100; tries++) {
        r = recv(fd, buf, 5 + len, MSG_PEEK);
        if (r == (ssize_t)(5 + len))
            break;
        usleep(10 * 1000);
    }
    r = recv(fd, buf, 5 + len, 0);
    size_t got = r > 5 ? (size_t)r - 5 : 0;
    snprintf(why, n, "%.*s", (int)got, buf + 5);
    return 1;
}

static void *monitor_main(void *arg)
{
    dist_ctx *d = arg;
    const int npeer = d->rank == 0 ? d->world - 1 : 1;
    struct pollfd *p = calloc((size_t)npeer, sizeof *p);
    int *peer = calloc((size_t)npeer, sizeof *peer);
    if (!p || !peer)
        return NULL;
    for (int i = 0; i < npeer; i++) {
        peer[i] = d->rank == 0 ? i + 1 : 0;
        p[i].fd = d->rank == 0 ? d->ctl_fd[i + 1] : d->ctl_fd[0];
        p[i].events = POLLIN;
    }
    char why[1200], text[1100];
    while (!atomic_load(&d->finishing)) {
        int r = poll(p, (nfds_t)npeer, 200);
        if (r <= 0 || atomic_load(&d->finishing))
            continue;
        for (int i = 0; i < npeer; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int k = read_control(p[i].fd, text, sizeof text);
            if (k < 0 || atomic_load(&d->finishing))
                continue;
            if (k == 1)
                snprintf(why, sizeof why, "%s", text);
            else
                snprintf(why, sizeof why, "rank %d exited without finishing (killed, crashed or stopped on an error)",
                         peer[i]);
            if (d->rank == 0)
                for (int j = 0; j < npeer; j++)
                    if (j != i)
                        send_abort(p[j].fd, why);
            die_for_peer(d, why);
        }
    }
    free(p);
    free(peer);
    return NULL;
}

/* ---- group ------------------------------------------------------------------------------- */

static int accept_peers(dist_ctx *d, int lfd, gp_err *e)
{
    const int want = 2 * (d->world - 1);
    double deadline = now_s() + d->timeout_s;
    for (int got = 0; got < want;) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        double left = deadline - now_s();
        if (left <= 0) {
            char missing[512] = "";
            size_t o = 0;
            for (int r = 1; r < d->world && o < sizeof missing - 16; r++)
                if (d->data_fd[r] < 0 || d->ctl_fd[r] < 0)
                    o += (size_t)snprintf(missing + o, sizeof missing - o, "%s%d", o ? ", " : "", r);
            return gp_fail(e, "rank 0: rank(s) %s did not join within %.0f s (dist_timeout)", missing, d->timeout_s);
        }
        if (poll(&p, 1, (int)GP_MIN(left * 1000 + 1, 1000)) <= 0)
            continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        tune_socket(fd);
        hello_msg h;
        if (recv_all(d, fd, &h, sizeof h, -1, e) != 0) {
            close(fd);
            return -1;
        }
        if (memcmp(h.magic, DIST_MAGIC, 8) != 0 || h.version != DIST_VERSION) {
            close(fd); /* not one of ours: a port scanner or another program */
            continue;
        }
        if (h.world != d->world) {
            close(fd);
            return gp_fail(e, "rank 0: a rank of a %d-rank job connected to this %d-rank job (two jobs on one "
                              "MASTER_PORT?)",
                           h.world, d->world);
        }
        int *slot = h.kind == CONN_DATA ? d->data_fd : d->ctl_fd;
        if (h.rank < 1 || h.rank >= d->world || h.kind > CONN_CONTROL || slot[h.rank] >= 0) {
            close(fd);
            return gp_fail(e, "rank 0: rank %d joined twice or is out of range (world %d): check RANK / the launcher",
                           h.rank, d->world);
        }
        slot[h.rank] = fd;
        got++;
    }
    /* Everyone is here: release them. */
    for (int r = 1; r < d->world; r++) {
        int32_t ok = 1;
        if (send_all(d, d->data_fd[r], &ok, sizeof ok, r, e) != 0)
            return -1;
    }
    return 0;
}

static int join_root(dist_ctx *d, const dist_env *de, gp_err *e)
{
    double deadline = now_s() + d->timeout_s;
    for (int kind = CONN_DATA; kind <= CONN_CONTROL; kind++) {
        int fd = connect_to(de, deadline, e);
        if (fd < 0)
            return -1;
        tune_socket(fd);
        hello_msg h = {.version = DIST_VERSION, .kind = (uint32_t)kind, .rank = d->rank, .world = d->world};
        memcpy(h.magic, DIST_MAGIC, 8);
        if (kind == CONN_DATA)
            d->data_fd[0] = fd;
        else
            d->ctl_fd[0] = fd;
        if (send_all(d, fd, &h, sizeof h, 0, e) != 0)
            return -1;
    }
    int32_t ok = 0;
    if (recv_all(d, d->data_fd[0], &ok, sizeof ok, 0, e) != 0)
        return gp_wrap(e, "waiting for the other ranks to join");
    return ok == 1 ? 0 : gp_fail(e, "rank %d: rank 0 refused this rank", d->rank);
}

dist_ctx *dist_init(const dist_env *de, double timeout_s, gp_err *e)
{
    dist_ctx *d = calloc(1, sizeof *d);
    if (!d) {
        gp_fail(e, "out of memory");
        return NULL;
    }
    d->rank = de->rank;
    d->world = de->world;
    d->local_rank = de->local_rank;
    d->local_world = de->local_world > 0 ? de->local_world : 1;
    d->timeout_s = timeout_s > 0 ? timeout_s : 600;
    if (d->world == 1)
        return d;
    int n = d->rank == 0 ? d->world : 1;
    d->data_fd = malloc((size_t)n * sizeof(int));
    d->ctl_fd = malloc((size_t)n * sizeof(int));
    if (!d->data_fd || !d->ctl_fd) {
        gp_fail(e, "out of memory");
        dist_free(d);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        d->data_fd[i] = d->ctl_fd[i] = -1;
    int rc;
    if (d->rank == 0) {
        int lfd = listen_on(de->master_port, e);
        if (lfd < 0) {
            dist_free(d);
            return NULL;
        }
        rc = accept_peers(d, lfd, e);
        close(lfd);
    } else {
        rc = join_root(d, de, e);
    }
    if (rc != 0) {
        gp_wrap(e, "joining the %d-rank group at %s:%d (launcher %s)", de->world, de->master_addr, de->master_port,
                de->source);
        dist_free(d);
        return NULL;
    }
    if (pthread_create(&d->monitor, NULL, monitor_main, d) != 0) {
        gp_fail(e, "cannot start the rank monitor thread");
        dist_free(d);
        return NULL;
    }
    d->monitor_running = 1;
    return d;
}

int dist_rank(const dist_ctx *d) { return d ? d->rank : 0; }
int dist_world(const dist_ctx *d) { return d ? d->world : 1; }
int dist_local_rank(const dist_ctx *d) { return d ? d->local_rank : 0; }
int dist_local_world(const dist_ctx *d) { return d ? d->local_world : 1; }

void dist_set_abort_hook(dist_ctx *d, void (*hook)(void *), void *arg)
{
    if (!d)
        return;
    d->abort_hook = hook;
    d->abort_arg = arg;
}

/* ---- collectives --------------------------------------------------------------------------- */

int dist_bcast(dist_ctx *d, void *buf, size_t bytes, gp_err *e)
{
    if (!d || d->world == 1)
        return 0;
    if (d->rank != 0)
        return recv_all(d, d->data_fd[0], buf, bytes, 0, e);
    for (int r = 1; r < d->world; r++)
        if (send_all(d, d->data_fd[r], buf, bytes, r, e) != 0)
            return -1;
    return 0;
}

/* Rank 0 adds the peers' buffers to its own in rank order with `add`, then sends the result. */
static int allreduce(dist_ctx *d, void *v, size_t n, size_t elem, void (*add)(void *, const void *, size_t), gp_err *e)
{
    if (!d || d->world == 1 || n == 0)
        return 0;
    const size_t bytes = n * elem;
    if (d->rank != 0) {
        if (send_all(d, d->data_fd[0], v, bytes, 0, e) != 0)
            return -1;
        return recv_all(d, d->data_fd[0], v, bytes, 0, e);
    }
    void *tmp = malloc(bytes);
    if (!tmp)
        return gp_fail(e, "out of memory for a %zu-byte all-reduce", bytes);
    for (int r = 1; r < d->world; r++) {
        if (recv_all(d, d->data_fd[r], tmp, bytes, r, e) != 0) {
            free(tmp);
            return -1;
        }
        add(v, tmp, n);
    }
    free(tmp);
    return dist_bcast(d, v, bytes, e);
}

static void add_f64(void *a, const void *b, size_t n)
{
    double *x = a;
    const double *y = b;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}
static void add_f32(void *a, const void *b, size_t n)
{
    float *x = a;
    const float *y = b;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}
static void add_i64(void *a, const void *b, size_t n)
{
    int64_t *x = a;
    const int64_t *y = b;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

int dist_allreduce_f64(dist_ctx *d, double *v, size_t n, gp_err *e) { return allreduce(d, v, n, 8, add_f64, e); }
int dist_allreduce_f32(dist_ctx *d, float *v, size_t n, gp_err *e) { return allreduce(d, v, n, 4, add_f32, e); }
int dist_allreduce_i64(dist_ctx *d, int64_t *v, size_t n, gp_err *e) { return allreduce(d, v, n, 8, add_i64, e); }

int dist_allgather(dist_ctx *d, const void *mine, size_t bytes, void **out, size_t *offsets, gp_err *e)
{
    const int W = dist_world(d);
    uint64_t *sizes = calloc((size_t)W, sizeof *sizes);
    if (!sizes)
        return gp_fail(e, "out of memory");
    sizes[dist_rank(d)] = bytes;
    int64_t *s64 = (int64_t *)sizes;
    if (dist_allreduce_i64(d, s64, (size_t)W, e) != 0) {
        free(sizes);
        return -1;
    }
    size_t total = 0;
    for (int r = 0; r < W; r++) {
        if (offsets)
            offsets[r] = total;
        total += sizes[r];
    }
    if (offsets)
        offsets[W] = total;
    char *all = malloc(total ? total : 1);
    if (!all) {
        free(sizes);
        return gp_fail(e, "out of memory for a %zu-byte all-gather", total);
    }
    int rc = 0;
    if (W == 1) {
        memcpy(all, mine, bytes);
    } else if (d->rank != 0) {
        rc = send_all(d, d->data_fd[0], mine, bytes, 0, e);
        if (rc == 0)
            rc = recv_all(d, d->data_fd[0], all, total, 0, e);
    } else {
        memcpy(all, mine, bytes);
        size_t at = bytes;
        for (int r = 1; r < W && rc == 0; r++) {
            rc = recv_all(d, d->data_fd[r], all + at, sizes[r], r, e);
            at += sizes[r];
        }
        if (rc == 0)
            rc = dist_bcast(d, all, total, e);
    }
    free(sizes);
    if (rc != 0) {
        free(all);
        return -1;
    }
    *out = all;
    return 0;
}

int dist_barrier(dist_ctx *d, gp_err *e)
{
    int64_t x = 0;
    return dist_allreduce_i64(d, &x, 1, e);
}

/* ---- ending -------------------------------------------------------------------------------- */

static void close_all(dist_ctx *d)
{
    int n = d->rank == 0 ? d->world : 1;
    for (int i = 0; i < n; i++) {
        if (d->data_fd && d->data_fd[i] >= 0)
            close(d->data_fd[i]);
        if (d->ctl_fd && d->ctl_fd[i] >= 0)
            close(d->ctl_fd[i]);
        if (d->data_fd)
            d->data_fd[i] = -1;
        if (d->ctl_fd)
            d->ctl_fd[i] = -1;
    }
}

static void stop_monitor(dist_ctx *d)
{
    atomic_store(&d->finishing, 1);
    if (d->monitor_running) {
        pthread_join(d->monitor, NULL);
        d->monitor_running = 0;
    }
}

void dist_abort(dist_ctx *d, const char *why)
{
    if (!d || d->world == 1)
        return;
    stop_monitor(d);
    char text[1100];
    snprintf(text, sizeof text, "rank %d stopped on an error: %s", d->rank, why);
    if (d->rank == 0) {
        for (int r = 1; r < d->world; r++)
            send_abort(d->ctl_fd[r], text);
    } else {
        send_abort(d->ctl_fd[0], text);
    }
    close_all(d);
}

int dist_finalize(dist_ctx *d, gp_err *e)
{
    if (!d || d->world == 1)
        return 0;
    if (dist_barrier(d, e) != 0)
        return -1;
    stop_monitor(d);
    /* The others close first: rank 0 closing early would look like its death to them. */
    if (d->rank == 0) {
        double deadline = now_s() + 30;
        for (int r = 1; r < d->world; r++) {
            struct pollfd p = {.fd = d->ctl_fd[r], .events = POLLIN};
            char c;
            while (now_s() < deadline) {
                if (poll(&p, 1, 200) > 0 && recv(d->ctl_fd[r], &c, 1, 0) <= 0)
                    break;
            }
        }
    }
    close_all(d);
    return 0;
}

void dist_free(dist_ctx *d)
{
    if (!d)
        return;
    stop_monitor(d);
    close_all(d);
    free(d->data_fd);
    free(d->ctl_fd);
    free(d);
}

/* ---- launcher ------------------------------------------------------------------------------ */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return DEFAULT_PORT;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof a;
    int port = DEFAULT_PORT;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void describe_status(int status, char *buf, size_t n)
{
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "ended with wait status %d", status);
}

int dist_launch(int nproc, int argc, char **argv, double grace_s)
{
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
        fprintf(stderr, "gpsdrec: cannot find this program's path to start %d ranks\n", nproc);
        return 1;
    }
    exe[len] = 0;
    char **args = calloc((size_t)argc + 2, sizeof *args);
    pid_t *pid = calloc((size_t)nproc, sizeof *pid);
    if (!args || !pid) {
        fprintf(stderr, "gpsdrec: out of memory\n");
        return 1;
    }
    args[0] = "gpsdrec";
    for (int i = 0; i < argc; i++)
        args[i + 1] = argv[i];
    const int port = free_port();
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < nproc; r++) {
        pid[r] = fork();
        if (pid[r] < 0) {
            fprintf(stderr, "gpsdrec: cannot start rank %d: %s\n", r, strerror(errno));
            for (int k = 0; k < r; k++)
                kill(pid[k], SIGKILL);
            return 1;
        }
        if (pid[r] == 0) {
            char v[32];
            snprintf(v, sizeof v, "%d", r);
            setenv("RANK", v, 1);
            setenv("LOCAL_RANK", v, 1);
            snprintf(v, sizeof v, "%d", nproc);
            setenv("WORLD_SIZE", v, 1);
            setenv("LOCAL_WORLD_SIZE", v, 1);
            snprintf(v, sizeof v, "%d", port);
            setenv("MASTER_PORT", v, 1);
            setenv("MASTER_ADDR", "127.0.0.1", 1);
            setenv("GPSDREC_LAUNCHER", "1", 1);
            execv(exe, args);
            fprintf(stderr, "gpsdrec: cannot run %s for rank %d: %s\n", exe, r, strerror(errno));
            _exit(127);
        }
    }
    int result = 0, alive = nproc, first_failed = -1, cause_known = 0;
    double failed_at = 0;
    while (alive > 0) {
        int status;
        pid_t p = waitpid(-1, &status, first_failed >= 0 ? WNOHANG : 0);
        if (p == 0) {
            if (now_s() - failed_at > grace_s) {
                for (int r = 0; r < nproc; r++)
                    if (pid[r] > 0) {
                        fprintf(stderr, "gpsdrec: rank %d did not stop within %.0f s of rank %d's failure: killing it\n",
                                r, grace_s, first_failed);
                        kill(pid[r], SIGKILL);
                    }
                grace_s = 1e30;
            }
            usleep(50 * 1000);
            continue;
        }
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        int r = 0;
        while (r < nproc && pid[r] != p)
            r++;
        if (r == nproc)
            continue;
        pid[r] = 0;
        alive--;
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        /* A rank that stopped because of another one's failure is not the cause, and may be reaped
         * before the rank that is: the first failure starts the grace period, the first failure
         * that is not a peer's stop is reported and gives the job's status. */
        const int peer = WIFEXITED(status) && WEXITSTATUS(status) == DIST_EXIT_PEER;
        if (!ok && first_failed < 0) {
            first_failed = r;
            failed_at = now_s();
            result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (!ok && !peer && !cause_known) {
            char what[128];
            describe_status(status, what, sizeof what);
            fprintf(stderr, "gpsdrec: rank %d %s; stopping the job\n", r, what);
            cause_known = 1;
            first_failed = r;
            result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
    }
    free(args);
    free(pid);
    return result;
}
