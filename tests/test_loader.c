/* The training loop's loader: the schedule it walks (epochs, resumed mid-epoch, gradient
 * accumulation, a rank's share), the same batches with and without the background thread, and
 * its edges (the end of the schedule, an early stop, an inconsistent schedule). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch.h"
#include "dataset.h"
#include "loader.h"
#include "synth.h"
#include "test.h"

static char *loader_data(dataset *ds)
{
    char *path = gp_path_join(test_tmp_dir(), "loader.gpsd");
    synth_config c = synth_default_config();
    c.n_users = 300;
    c.n_items = 150;
    c.n_cates = 8;
    c.n_topics = 10;
    c.mean_len = 10;
    c.protocol.max_history = 12;
    synth_report rep;
    gp_err e = {{0}};
    if (synth_generate(&c, path, &rep, &e) != 0)
        test_failure(__FILE__, __LINE__, "%s", e.msg);
    ds_open_opts oo = ds_default_open_opts();
    if (dataset_open(ds, path, &oo, &e) != 0)
        test_failure(__FILE__, __LINE__, "%s", e.msg);
    return path;
}

static loader_spec spec_of(const dataset *ds, int prefetch)
{
    loader_spec sp = {.ds = ds,
                      .recs = ds->split_begin[DS_SPLIT_PRETRAIN],
                      .n_recs = (int64_t)ds->split_count[DS_SPLIT_PRETRAIN],
                      .seed = 99,
                      .shuffle = 1,
                      .batch_size = 24,
                      .grad_accum = 2,
                      .lo = 5,
                      .B = 10,
                      .S = 12,
                      .N = 7,
                      .n_items = (int64_t)ds->hdr->n_items,
                      .prefetch = prefetch};
    sp.steps_per_epoch = sp.n_recs / (sp.batch_size * sp.grad_accum);
    /* resumed in the middle of the second epoch, three epochs in all */
    sp.epoch = 1;
    sp.epoch_step = 2;
    sp.step = sp.steps_per_epoch + 2;
    sp.micro = sp.step * sp.grad_accum;
    sp.total_steps = 3 * sp.steps_per_epoch;
    return sp;
}

static int same_batch(const batch *a, const batch *b)
{
    const size_t bs = (size_t)a->B * (size_t)a->S * sizeof(int32_t), b1 = (size_t)a->B * sizeof(int32_t);
    return a->B == b->B && a->S == b->S && a->N == b->N && a->first_seq == b->first_seq && a->sync == b->sync &&
           a->norm_item == b->norm_item && !memcmp(a->hist_item, b->hist_item, bs) &&
           !memcmp(a->hist_cate, b->hist_cate, bs) && !memcmp(a->item_label, b->item_label, bs) &&
           !memcmp(a->cate_label, b->cate_label, bs) && !memcmp(a->hist_len, b->hist_len, b1) &&
           !memcmp(a->target_item, b->target_item, b1) && !memcmp(a->target_cate, b->target_cate, b1) &&
           !memcmp(a->click, b->click, b1) && !memcmp(a->user, b->user, b1) &&
           !memcmp(a->negatives, b->negatives, b1 * (size_t)a->N);
}

/* Every micro-batch of the schedule against the one built directly from the contract, with and
 * without the thread; then one past the end fails. */
static void schedule_case(int prefetch)
{
    dataset ds;
    char *path = loader_data(&ds);
    loader_spec sp = spec_of(&ds, prefetch);
    REQUIRE(sp.steps_per_epoch >= 3, "only %lld steps an epoch", (long long)sp.steps_per_epoch);
    gp_err e = {{0}};
    loader *L;
    REQUIRE(loader_start(&L, &sp, &e) == 0, "%s", e.msg);
    const ds_record **order = malloc((size_t)sp.n_recs * sizeof *order);
    batch want;
    batch_alloc(&want, sp.B, sp.S, sp.N);
    int64_t micro = sp.micro, n = 0, bad = 0;
    for (int64_t ep = sp.epoch; ep < 3; ep++) {
        loader_epoch_order(order, sp.recs, sp.n_recs, sp.seed, ep, sp.shuffle);
        for (int64_t es = ep == sp.epoch ? sp.epoch_step : 0; es < sp.steps_per_epoch; es++)
            for (int a = 0; a < sp.grad_accum; a++, micro++, n++) {
                batch_fill(&want, &ds, order + (es * sp.grad_accum + a) * sp.batch_size + sp.lo, sp.B);
                want.first_seq = sp.lo;
                batch_sample_negatives(&want, sp.seed, (uint64_t)micro, sp.n_items);
                batch *got = loader_next(L, &e);
                REQUIRE(got, "micro-batch %lld: %s", (long long)n, e.msg);
                if (prefetch)
                    usleep(1000); /* time for a thread that overran its buffers to overwrite this one */
                if (!same_batch(got, &want) && bad++ < 3)
                    CHECK(0, "micro-batch %lld (epoch %lld step %lld part %d) differs", (long long)n, (long long)ep,
                          (long long)es, a);
                /* the caller owns it: scribbling on it must not reach a later batch */
                got->norm_item = 12345;
                got->sync = 1;
                memset(got->negatives, 0xff, (size_t)got->B * (size_t)got->N * sizeof(int32_t));
            }
    }
    CHECK(n == (sp.total_steps - sp.step) * sp.grad_accum, "%lld micro-batches", (long long)n);
    CHECK(!bad, "%lld of %lld micro-batches differ", (long long)bad, (long long)n);
    CHECK(loader_wait_seconds(L) >= 0);
    CHECK(loader_next(L, &e) == NULL && strstr(e.msg, "all used"), "past the end: %s", e.msg);
    loader_stop(L);
    batch_free(&want);
    free(order);
    dataset_close(&ds);
    free(path);
}

TEST(loader_schedule_matches_the_contract_inline) { schedule_case(0); }
TEST(loader_schedule_matches_the_contract_prefetched) { schedule_case(1); }

TEST(loader_stops_early_and_rejects_a_bad_schedule)
{
    dataset ds;
    char *path = loader_data(&ds);
    gp_err e = {{0}};
    loader *L;
    loader_spec sp = spec_of(&ds, 1);
    REQUIRE(loader_start(&L, &sp, &e) == 0, "%s", e.msg);
    loader_stop(L); /* nothing taken: the thread is parked on a full buffer or still building */
    REQUIRE(loader_start(&L, &sp, &e) == 0, "%s", e.msg);
    CHECK(loader_next(L, &e) != NULL, "%s", e.msg);
    CHECK(loader_next(L, &e) != NULL, "%s", e.msg);
    loader_stop(L);
    sp.lo = 20; /* 20 + 10 sequences out of a micro-batch of 24 */
    CHECK(loader_start(&L, &sp, &e) != 0 && strstr(e.msg, "inconsistent schedule") && L == NULL, "%s", e.msg);
    sp = spec_of(&ds, 0);
    sp.steps_per_epoch = sp.n_recs; /* more steps than the records fill */
    CHECK(loader_start(&L, &sp, &e) != 0 && strstr(e.msg, "inconsistent schedule"), "%s", e.msg);
    sp = spec_of(&ds, 0);
    for (int past = 0; past <= 3; past += 3) {
        /* nothing left to run (past: resumed beyond a schedule since shortened): valid and empty */
        sp = spec_of(&ds, past > 0);
        sp.step = sp.total_steps + past;
        REQUIRE(loader_start(&L, &sp, &e) == 0, "step %lld of %lld: %s", (long long)sp.step,
                (long long)sp.total_steps, e.msg);
        CHECK(loader_next(L, &e) == NULL, "an empty schedule gave a batch");
        loader_stop(L);
    }
    dataset_close(&ds);
    free(path);
}
