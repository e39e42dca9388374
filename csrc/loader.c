#include "loader.h"

#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rng.h"

void loader_epoch_order(const ds_record **order, const ds_record *recs, int64_t n, uint64_t seed, int64_t epoch,
                        int shuffle)
{
    for (int64_t i = 0; i < n; i++)
        order[i] = &recs[i];
    if (!shuffle)
        return;
    gp_rng g = gp_rng_stream(seed, RNG_PURPOSE_SHUFFLE, (uint64_t)epoch, 0);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)gp_rng_below64(&g, (uint64_t)i + 1);
        const ds_record *t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

struct loader {
    loader_spec sp;
    batch slot[2];
    int n_slots;
    const ds_record **order;
    int64_t order_epoch; /* the epoch whose order `order` holds; -1: none yet */
    /* the builder's cursor: the next micro-batch to build */
    int64_t epoch, es, a, micro;
    int64_t n_total; /* micro-batches in the schedule */
    /* shared with the thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t built, taken, released;
    int stop;
    int has_thread;
    pthread_t thread;
    double wait_s; /* the caller's only */
};

/* Builds the micro-batch at the cursor into x and advances the cursor. */
static void build_next(loader *L, batch *x)
{
    const loader_spec *sp = &L->sp;
    while (L->es >= sp->steps_per_epoch) {
        L->es = 0;
        L->epoch++;
    }
    if (L->order_epoch != L->epoch) {
        loader_epoch_order(L->order, sp->recs, sp->n_recs, sp->seed, L->epoch, sp->shuffle);
        L->order_epoch = L->epoch;
    }
    const int64_t base = (L->es * sp->grad_accum + L->a) * sp->batch_size;
    batch_fill(x, sp->ds, L->order + base + sp->lo, sp->B);
    x->first_seq = sp->lo;
    x->norm_item = x->norm_cate = x->norm_rank = 0;
    x->sync = 0;
    batch_sample_negatives(x, sp->seed, (uint64_t)L->micro, sp->n_items);
    L->micro++;
    if (++L->a == sp->grad_accum) {
        L->a = 0;
        L->es++;
    }
}

static void *builder_main(void *arg)
{
    loader *L = arg;
    /* Best effort: at normal priority the batch would compete with the backend's own host work
     * for the cores; failing to lower the priority only costs that. */
    errno = 0;
    int prio = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), prio + 10 > 19 ? 19 : prio + 10);
    if (L->sp.threads > 0)
        omp_set_num_threads(L->sp.threads);
    for (int64_t k = 0; k < L->n_total; k++) {
        pthread_mutex_lock(&L->mu);
        while (!L->stop && k - L->released >= L->n_slots)
            pthread_cond_wait(&L->cv, &L->mu);
        int stop = L->stop;
        pthread_mutex_unlock(&L->mu);
        if (stop)
            break;
        build_next(L, &L->slot[k % L->n_slots]);
        pthread_mutex_lock(&L->mu);
        L->built = k + 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
    }
    return NULL;
}

int loader_start(loader **out, const loader_spec *sp, gp_err *e)
{
    *out = NULL;
    if (sp->B < 1 || sp->lo < 0 || sp->lo + sp->B > sp->batch_size || sp->grad_accum < 1 || sp->steps_per_epoch < 1 ||
        sp->steps_per_epoch * sp->grad_accum * sp->batch_size > sp->n_recs)
        return gp_fail(e, "loader: inconsistent schedule (rank share [%d, %d) of %lld sequences, %lld x %lld per step, "
                          "%lld steps an epoch over %lld records)",
                       sp->lo, sp->lo + sp->B, (long long)sp->batch_size, (long long)sp->batch_size,
                       (long long)sp->grad_accum, (long long)sp->steps_per_epoch, (long long)sp->n_recs);
    loader *L = gp_xcalloc(1, sizeof *L);
    L->sp = *sp;
    L->n_slots = sp->prefetch ? 2 : 1;
    for (int i = 0; i < L->n_slots; i++)
        batch_alloc(&L->slot[i], sp->B, sp->S, sp->N);
    L->order = gp_xmalloc((size_t)(sp->n_recs > 0 ? sp->n_recs : 1) * sizeof *L->order);
    L->order_epoch = -1;
    L->epoch = sp->epoch;
    L->es = sp->epoch_step;
    L->micro = sp->micro;
    /* a run resumed past a schedule since shortened has nothing left to train */
    L->n_total = sp->total_steps > sp->step ? (sp->total_steps - sp->step) * sp->grad_accum : 0;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    if (sp->prefetch && L->n_total > 0) {
        int rc = pthread_create(&L->thread, NULL, builder_main, L);
        if (rc != 0) {
            loader_stop(L);
            return gp_fail(e, "loader: cannot start the batch thread (%s)", strerror(rc));
        }
        L->has_thread = 1;
    }
    *out = L;
    return 0;
}

batch *loader_next(loader *L, gp_err *e)
{
    double t0 = gp_now();
    if (L->taken >= L->n_total) {
        gp_fail(e, "loader: the schedule's %lld micro-batches are all used", (long long)L->n_total);
        return NULL;
    }
    batch *x;
    if (!L->has_thread) {
        x = &L->slot[0];
        build_next(L, x);
        L->taken++;
    } else {
        pthread_mutex_lock(&L->mu);
        L->released = L->taken; /* the batch the caller held is done with */
        pthread_cond_broadcast(&L->cv);
        while (L->built <= L->taken)
            pthread_cond_wait(&L->cv, &L->mu);
        x = &L->slot[L->taken % L->n_slots];
        L->taken++;
        pthread_mutex_unlock(&L->mu);
    }
    L->wait_s += gp_now() - t0;
    return x;
}

double loader_wait_seconds(const loader *L) { return L ? L->wait_s : 0.0; }

void loader_stop(loader *L)
{
    if (!L)
        return;
    if (L->has_thread) {
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
        pthread_join(L->thread, NULL);
    }
    pthread_cond_destroy(&L->cv);
    pthread_mutex_destroy(&L->mu);
    for (int i = 0; i < L->n_slots; i++)
        batch_free(&L->slot[i]);
    free(L->order);
    free(L);
}
