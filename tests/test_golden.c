/* The CPU backend against the official PyTorch model's golden vectors: every loss, the rank
 * outputs and every parameter's gradient, for each file in shared/golden. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "support/golden.h"
#include "settings.h"
#include "test.h"

static void check_loss(const char *file, const char *what, double got, double want)
{
    double tol = 1e-5 * fabs(want) + 1e-7;
    if (!(fabs(got - want) <= tol))
        test_failure(__FILE__, __LINE__, "%s: %s = %.9g, official %.9g (diff %.3g)", file, what, got, want,
                     fabs(got - want));
}

static void run_golden_case(const char *name)
{
    golden_case g;
    gp_err e = {{0}};
    if (golden_load(&g, name, &e) != 0) {
        test_failure(__FILE__, __LINE__, "%s", e.msg);
        golden_free(&g);
        return;
    }
    const model_layout *l = &g.layout;
    backend_opts opts = {.max_batch = g.x.B, .freeze_sparse = 0, .threads = 0};
    backend *b = backend_cpu_create(l, &opts, &e);
    REQUIRE(b != NULL, "%s", e.msg);
    CHECK(b->set_params(b, g.sparse, g.dense, &e) == 0, "%s", e.msg);
    step_losses out;
    float *prob = gp_xcalloc((size_t)g.x.B, sizeof(float));
    CHECK(b->forward_backward(b, &g.x, 1.0f, &out, prob, &e) == 0, "%s", e.msg);
    check_loss(name, "loss", out.loss, g.loss);
    check_loss(name, "item_ar_loss", out.item_loss, g.item_loss);
    check_loss(name, "cate_ar_loss", out.cate_loss, g.cate_loss);
    check_loss(name, "rank_loss", out.rank_loss, g.rank_loss);
    if (l->cfg.w_rank > 0)
        for (int i = 0; i < g.x.B; i++)
            CHECK(fabs(prob[i] - g.rank_outputs[i]) <= 1e-5 * fabs(g.rank_outputs[i]) + 1e-7,
                  "%s: rank output %d = %.9g, official %.9g", name, i, prob[i], g.rank_outputs[i]);
    float *gs = gp_xcalloc((size_t)l->sparse_numel, sizeof(float));
    float *gd = gp_xcalloc((size_t)l->dense_numel, sizeof(float));
    CHECK(b->get_grads(b, gs, gd, &e) == 0, "%s", e.msg);
    for (int t = 0; t < l->n_tensors; t++) {
        const tensor_info *ti = &l->tensors[t];
        const float *got = (ti->arena == ARENA_SPARSE ? gs : gd) + ti->offset;
        const float *want = (ti->arena == ARENA_SPARSE ? g.grad_sparse : g.grad_dense) + ti->offset;
        double md, mr;
        golden_max_diff(got, want, ti->numel, &md, &mr);
        /* The golden README: each gradient within about 1e-4 of its tensor's largest magnitude. */
        double tol = 1e-4 * (mr > 0 ? mr : 1.0);
        if (mr == 0)
            tol = 1e-9;
        if (!(md <= tol))
            test_failure(__FILE__, __LINE__, "%s: grad of %s differs by %.3g (largest official %.3g)", name, ti->name, md,
                         mr);
    }
    free(gs);
    free(gd);
    free(prob);
    backend_destroy(b);
    golden_free(&g);
}

TEST(golden_pretrain_l2h16a4) { run_golden_case("pretrain_l2h16a4.safetensors"); }
TEST(golden_finetune_l2h16a4) { run_golden_case("finetune_l2h16a4.safetensors"); }
TEST(golden_finetune_l2h16a4_bidirectional) { run_golden_case("finetune_l2h16a4_bidirectional.safetensors"); }
TEST(golden_pretrain_l1h32a4_emb8) { run_golden_case("pretrain_l1h32a4_emb8.safetensors"); }
TEST(golden_finetune_l2h64a4_long) { run_golden_case("finetune_l2h64a4_long.safetensors"); }
TEST(golden_pretrain_l2h64a4_long) { run_golden_case("pretrain_l2h64a4_long.safetensors"); }

/* Our layout is the official state_dict: the same names in the same order as the golden file. */
TEST(golden_layout_matches_official_names)
{
    golden_case g;
    gp_err e = {{0}};
    REQUIRE(golden_load(&g, "pretrain_l1h32a4_emb8.safetensors", &e) == 0, "%s", e.msg);
    int params = 0;
    for (int i = 0; i < g.file.n; i++)
        params += strncmp(g.file.tensors[i].name, "param.", 6) == 0;
    CHECK(params == g.layout.n_tensors, "file has %d params, layout %d tensors", params, g.layout.n_tensors);
    golden_free(&g);
}
