/*
 * oa_reactdiff.h - public interface of oa_reactdiff.c, a dependency-light C reference
 * implementation of OA-ReactDiff (Duan, Du, Jia, Kulik, Nat. Comput. Sci. 3, 1045 (2023)).
 *
 * One source, two builds: float32 (default) and float64 (compile with -DOARD_DOUBLE).
 * The library never calls exit() or abort(); every function that can fail returns an
 * OARD_* status code and writes a one-line message into the caller's `err` buffer
 * (err may be NULL). No global mutable state: models, RNGs and options are passed in.
 */
#ifndef OA_REACTDIFF_H
#define OA_REACTDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifdef OARD_DOUBLE
typedef double oard_real;
#define OARD_REAL_NAME "float64"
#else
typedef float oard_real;
#define OARD_REAL_NAME "float32"
#endif

/* ---- status codes ---- */
enum {
    OARD_OK = 0,
    OARD_ERR_IO = 1,      /* cannot open / read / write a file */
    OARD_ERR_FORMAT = 2,  /* malformed input (weights, xyz, tape, arguments) */
    OARD_ERR_MODEL = 3,   /* weights do not fit the requested use (kind, shapes) */
    OARD_ERR_NOMEM = 4,   /* allocation failed or system too large */
    OARD_ERR_NUMERIC = 5, /* NaN / Inf produced during a computation */
    OARD_ERR_ARG = 6      /* invalid argument */
};

#define OARD_ERRLEN 512

/* ---- model ---- */
enum { OARD_KIND_DENOISER = 1, OARD_KIND_CONFIDENCE = 2 };
/* A denoiser's objective: OA-ReactDiff's diffusion (noise prediction, RePaint inpainting)
 * or React-OT's optimal-transport bridge (the TS output moves the R-P midpoint to the TS). */
enum { OARD_OBJECTIVE_DIFFUSION = 0, OARD_OBJECTIVE_BRIDGE = 1 };

#define OARD_MAX_FRAG 3
#define OARD_MAX_ELEM 16

typedef struct {
    int kind;                  /* OARD_KIND_* */
    /* LEFTNet */
    int num_layers, hidden_channels, num_radial, in_hidden_channels;
    double cutoff;
    int reflect_equiv, legacy, update, pos_grad, single_layer_output, object_aware, for_conf;
    /* dynamics wrapper */
    int n_fragments;           /* 3: R, TS, P */
    int node_nfs[OARD_MAX_FRAG];
    int pos_dim;               /* 3 */
    int condition_nf, condition_time;
    /* element table: one-hot index i is elements[i] with nuclear charge element_z[i] */
    int n_elements;
    char element_sym[OARD_MAX_ELEM][4];
    int element_z[OARD_MAX_ELEM];
    /* diffusion (denoiser only) */
    int pos_only;
    double norm_values[3], norm_biases[3];
    char sampling_schedule[64];
    int sampling_timesteps;
    double sampling_precision;
    char training_schedule[64];
    int training_timesteps;
    double training_precision;
    double loss_scales[OARD_MAX_FRAG];
    /* what the denoiser's TS output means (OARD_OBJECTIVE_*). A bridge model (React-OT) has
     * the SB schedule below and needs no diffusion schedule: the sampling_/training_ keys
     * above are then empty (0) unless the file carries them from a diffusion model it was
     * fine-tuned from, and are not used. */
    int objective;
    int sb_timesteps;          /* SBSchedule timesteps (3000) */
    double sb_beta_max, sb_power, sb_inv_power; /* 0.3, 0.5, 1 as train_rpsb_ts1x.py */
    /* provenance */
    char source_file[256];
    char source_sha256[72];
    int trained;
    char description[512];
    uint32_t crc32;
    size_t n_params;           /* parameters as upstream counts them (no gamma tables, no RBF buffers) */
} oard_config;

typedef struct oard_model oard_model;

/* Load a weights.bin file. expected_kind = OARD_KIND_* or 0 for any. */
int oard_model_load(const char *path, int expected_kind, oard_model **out, char *err);
void oard_model_free(oard_model *m);
const oard_config *oard_model_config(const oard_model *m);
/* Value of a metadata key as stored in the file, or NULL. */
const char *oard_model_meta(const oard_model *m, const char *key);

/* ---- a batch of reactions ----
 * B samples; sample b has sizes[b] atoms in each of the three fragments. Node layout as
 * upstream: fragment-major (all R nodes, then TS, then P), and inside a fragment sample 0's
 * atoms, then sample 1's, ... Per fragment an array of (sum sizes) x node_nf values:
 * x, y, z, one-hot (n_elements), Z. */
typedef struct {
    int n_samples;
    const int *sizes;
    int n_threads;            /* <= 0: library default (OpenMP's), 1: serial */
} oard_batch;

/* Optional per-layer dump, for checking against upstream's intermediate outputs.
 * name is e.g. "neighbor_emb.out", "s2v.out", "gcl0.out0", "msg1.out1", "out_pos.out1";
 * shape is rows x cols (vectors (N,3,H) are passed as rows=N, cols=3*H). */
typedef void (*oard_dump_fn)(void *ctx, const char *name, const oard_real *data, size_t rows,
                             size_t cols);

/* One call of the denoiser (upstream EGNNDynamics.forward): z_t -> predicted noise.
 * xh[f]: (n_f, node_nf) inputs; t: per sample (B); cond: (B, condition_nf) or NULL for 0;
 * eps[f]: (n_f, node_nf) outputs, the position part centred per fragment and sample. */
int oard_denoise(const oard_model *m, const oard_batch *batch, const oard_real *const xh[],
                 const oard_real *t, const oard_real *cond, oard_real *const eps[],
                 oard_dump_fn dump, void *dump_ctx, char *err);

/* ---- repeated calls and memory ----
 * A workspace holds the graph and every work buffer of one batch shape, so that repeated
 * denoiser calls (the samplers make one per step) allocate nothing. oard_denoise makes a
 * workspace per call. */
typedef struct oard_workspace oard_workspace;

/* Bytes of work memory (graph and buffers) a denoiser or confidence call on this batch
 * needs, computed from the configuration and the sizes alone; 0 for an invalid batch. */
size_t oard_memory_estimate(const oard_model *m, const oard_batch *batch);

/* Allocate a workspace for batches of this shape (sample count and sizes; the thread count
 * is taken from batch too). It is refused with OARD_ERR_NOMEM and a message giving the
 * estimate, before anything is allocated, when the estimate exceeds max_bytes; max_bytes
 * 0 means $OA_REACTDIFF_MAX_MEMORY (bytes, or with a K, M or G suffix) if set, else the
 * physical memory. */
int oard_workspace_new(const oard_model *m, const oard_batch *batch, size_t max_bytes, oard_workspace **out,
                       char *err);
void oard_workspace_free(oard_workspace *ws);

/* oard_denoise on a workspace (same batch shape as when it was made), without a dump. */
int oard_denoise_ws(oard_workspace *ws, const oard_real *const xh[], const oard_real *t, const oard_real *cond,
                    oard_real *const eps[], char *err);

/* Confidence (recommender) score per sample (upstream Confidence.forward). */
int oard_confidence(const oard_model *m, const oard_batch *batch, const oard_real *const xh[],
                    const oard_real *cond, oard_real *score, char *err);

/* ---- noise schedules (upstream diffusion/_schedule.py) ----
 * gamma[0..T] is computed in double and stored as float32, as upstream. */
typedef struct {
    char name[64];
    int T;
    double precision;
    float *gamma; /* T + 1 entries */
} oard_schedule;

int oard_schedule_init(oard_schedule *s, const char *name, int T, double precision, char *err);
void oard_schedule_free(oard_schedule *s);
/* gamma(t) for t = t_int / T, upstream's table[round(t * T)] */
float oard_gamma(const oard_schedule *s, int t_int);
/* float32 schedule arithmetic, as upstream DiffSchedule */
float oard_sigma(float gamma);
float oard_alpha(float gamma);
void oard_sigma_alpha_t_given_s(float gamma_t, float gamma_s, float *sigma2_t_given_s,
                                float *sigma_t_given_s, float *alpha_t_given_s);

/* RePaint segment list (upstream get_repaint_schedule). Writes at most cap entries into
 * out (out may be NULL to count them) and returns the number of entries (which may exceed
 * cap), or -1 on bad arguments or a list longer than INT_MAX. Allocates nothing. */
int oard_repaint_schedule(int resamplings, int jump_length, int timesteps, int *out, int cap);

/* ---- randomness ----
 * Seeded mode: xoshiro256** (Blackman & Vigna) seeded through splitmix64, standard normals
 * by the Box-Muller transform; the same seed gives the same numbers on every machine.
 * Replay mode: the normals come from a recorded tape in upstream's draw order; each draw
 * names its shape and must match the recorded one. */
typedef struct {
    uint64_t s[4];
    int has_spare;
    double spare;
    /* replay */
    const double *tape;
    size_t tape_len, tape_pos;
    const int64_t *shapes; /* n_shapes x 2 (rows, cols) or NULL */
    size_t n_shapes, shape_pos;
} oard_rng;

void oard_rng_seed(oard_rng *r, uint64_t seed);
void oard_rng_replay(oard_rng *r, const double *tape, size_t n, const int64_t *shapes,
                     size_t n_shapes);
/* Fill out[rows*cols] with standard normals (one draw of that shape). */
int oard_rng_normal(oard_rng *r, oard_real *out, size_t rows, size_t cols, char *err);

/* ---- samplers (upstream EnVariationalDiffusion.sample / .inpaint) ---- */
typedef struct {
    int timesteps;      /* 0: the model's sampling_timesteps */
    const char *schedule; /* NULL: the model's sampling_schedule */
    double precision;   /* <= 0: the model's sampling_precision */
    int resamplings;    /* inpaint: RePaint resamplings (1 = none) */
    int jump_length;    /* inpaint: RePaint jump length */
    /* called after every denoising step with the number done and the total; may be NULL */
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
} oard_sampler_opts;

/* Generate whole reactions from atom types. xh[f] (n_f, node_nf): on input the features
 * (columns pos_dim..) define the atoms; on output positions and features are the sample. */
int oard_sample(const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o,
                const oard_real *cond, oard_real *const xh[], oard_rng *rng, char *err);

/* Inpainting: fragments 0 (R) and 2 (P) are fixed to xh_fixed (raw positions, centred
 * here), the TS is generated with RePaint resampling. out[f] receives every fragment. */
int oard_inpaint(const oard_model *m, const oard_batch *batch, const oard_sampler_opts *o,
                 const oard_real *cond, const oard_real *const xh_fixed[], oard_real *const out[],
                 oard_rng *rng, char *err);

/* ---- React-OT: the optimal-transport bridge (github.com/deepprinciple/react-ot a1fa217) ----
 * SBSchedule, computed in double and stored as float32 (as upstream's tensors), T entries
 * each: betas, std_fwd, std_bwd, std_sb, mu_x0, mu_x1. */
typedef struct {
    int T;
    double beta_max, power, inv_power;
    float *betas, *std_fwd, *std_bwd, *std_sb, *mu_x0, *mu_x1;
    double *f64_b, *f64_betas, *f64_std_fwd, *f64_std_bwd, *f64_mu_x0, *f64_mu_x1, *f64_var; /* before the cast */
} oard_sb_schedule;

int oard_sb_schedule_init(oard_sb_schedule *s, int T, double beta_max, double power, double inv_power, char *err);
void oard_sb_schedule_free(oard_sb_schedule *s);

/* upstream's space_indices(n, c): c indices from 0 to n-1 by repeated float addition of
 * (n-1)/(c-1), rounded half to even. Writes c values into out. */
void oard_space_indices(int n, int c, int *out);

enum { OARD_SOLVER_ODE = 0, OARD_SOLVER_DDPM = 1, OARD_SOLVER_EI = 2 };
enum { OARD_ODE_MIDPOINT = 0, OARD_ODE_EULER = 1 };

typedef struct {
    int solver;     /* OARD_SOLVER_*: ode (default, upstream's evaluation setting), ddpm, ei */
    int nfe;        /* pairs of the step list (0: 10); ode midpoint calls the network 2 nfe times */
    int ode_method; /* OARD_ODE_*: midpoint (default) or euler */
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
} oard_bridge_opts;

/* The denoiser m as a bridge model (React-OT fine-tunes OA-ReactDiff's network): the same
 * parameters, objective bridge with the SB schedule (T, beta_max, power, inv_power;
 * train_rpsb_ts1x.py: 3000, 0.3, 0.5, 1), without the diffusion schedule tables. */
int oard_model_to_bridge(const oard_model *m, int T, double beta_max, double power, double inv_power,
                         oard_model **out, char *err);

/* How many states the sampler logs (upstream's trajectory length) for these options. */
int oard_bridge_n_logged(const oard_bridge_opts *o, int T);

/* A whole React-OT sampler run (EnSB.sample with ot_ode): x1 = (R + P)/2 re-centred per
 * sample over the TS atoms, transported to the TS in nfe steps of the chosen solver.
 * xh[f] (n_f, node_nf): R and P as given (positions used as they are: upstream's data are
 * centred per fragment; align P onto R first for deployment), TS features (its positions
 * are ignored). ts_pos (NF, 3): the final TS (upstream's xs[:, 0]). xs, pred_x0s: NULL or
 * (NF, n_logged, 3) each, upstream's logged trajectory exactly as returned (latest first). */
int oard_bridge_sample(const oard_model *m, const oard_batch *batch, const oard_bridge_opts *o,
                       const oard_real *cond, const oard_real *const xh[], oard_real *ts_pos,
                       oard_real *xs, oard_real *pred_x0s, char *err);

/* ---- parameters and training ----
 * Every tensor of a loaded model lives in one parameter arena of oard_param_size() reals
 * (oard_param_data()); the forward passes read it in place, so writing the arena changes
 * the model. A Linear's weight (out, in) is stored transposed, (in, ld) with zero padding
 * up to ld >= out; everything else in upstream's row-major order. Gradients use the same
 * layout, so an optimizer works on flat arrays. */
typedef struct {
    const char *name;  /* upstream state_dict key, e.g. "ddpm.dynamics.model.embedding.weight" */
    int ndim;
    int64_t dims[4];   /* upstream shape */
    size_t offset;     /* first value in the arena */
    int ld;            /* transposed weight: arena row length (>= dims[0]); 0: upstream order */
    int trainable;     /* 0 for buffers: gamma tables, RBF means and betas */
} oard_tensor;

size_t oard_param_size(const oard_model *m);
oard_real *oard_param_data(oard_model *m);
int oard_tensor_count(const oard_model *m);
int oard_tensor_info(const oard_model *m, int i, oard_tensor *out); /* OARD_ERR_ARG if out of range */
/* Tensor i of an arena-layout array (the parameters, a gradient, an optimizer state) in
 * upstream's row-major layout: out has dims[0] x dims[1] x ... values. */
void oard_tensor_get(const oard_model *m, int i, const oard_real *arena, double *out);

/* Terms of upstream's training objective per sample (DDPMModule.compute_loss, loss_type
 * "l2", training mode), in the order of the golden files term.<name>. */
enum { OARD_TERM_LOSS_T, OARD_TERM_LOSS_0_X, OARD_TERM_LOSS_0_CAT, OARD_TERM_LOSS_0_CHARGE, OARD_TERM_NLL,
       OARD_N_TERMS };

/* Upstream's training loss of one batch and its gradient with respect to every parameter.
 * xh[f]: clean (n_f, node_nf) inputs (positions are centred per fragment and sample here);
 * t_int[b]: integer time 0..T of the model's training schedule (upstream draws it
 * uniformly); the noise is one combined draw from rng (replayable in upstream's order).
 * loss: the batch mean of the per-sample nll; terms: (B, OARD_N_TERMS) or NULL; grad:
 * oard_param_size() values, overwritten (zero for buffers and for parameters the loss
 * does not reach), or NULL for the loss alone. Samples run in parallel over
 * batch->n_threads threads; the result does not depend on the thread count. */
int oard_train_loss(const oard_model *m, const oard_batch *batch, const oard_real *const xh[], const oard_real *cond,
                    const int *t_int, oard_rng *rng, double *loss, double *terms, oard_real *grad, char *err);

/* Write the model, with the parameter arena `params` (NULL: the model's own), as a
 * weights file at path (via a temporary file and rename). meta: NULL or a NULL-terminated
 * list of key, value strings that replace or add metadata lines. Tensors are written as
 * float32, or in float64 when f64 is set (exact checkpoints of a double build).
 * The temporary file is PATH.tmp.<pid>; every tensor, the schedule tables and RBF buffers
 * included, is written in the file order of the loaded model; the architecture keys
 * (num_layers, hidden_channels, ..., elements, *_timesteps) cannot be changed through meta. */
int oard_model_save(const oard_model *m, const oard_real *params, const char *const *meta, int f64, const char *path,
                    char *err);

/* A freshly initialised denoiser, as upstream's constructors initialise one: nn.Linear
 * weights and biases U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's default), Xavier-uniform where
 * LEFTNet's reset_parameters asks for it (EquiMessage x_proj and rbf_proj, EquiUpdate
 * vec_proj and xvec_proj, the gated output blocks, whose biases are 0), LayerNorm weight 1
 * and bias 0, the RBF buffers of RBFEmb and the gamma tables of the schedules. config:
 * comma-separated key=value items over upstream's training defaults (train_ts1x.py:
 * 6 layers, 196 hidden, 96 radial, cutoff 10, cosine training schedule with T=5000),
 * e.g. "layers=4,hidden=64,radial=32,cutoff=10" (keys: layers, hidden, radial, cutoff,
 * in_hidden_channels, the LEFTNet flags reflect_equiv, legacy, update, pos_grad,
 * single_layer_output, object_aware, and training_/sampling_ schedule, timesteps,
 * precision). The uniform draws come from seed. The model is marked untrained. */
int oard_model_init(const char *config, uint64_t seed, oard_model **out, char *err);

/* ---- optimizer: upstream's AdamW with adaptive gradient clipping, optional EMA ----
 * torch.optim.AdamW (PyTorch 1.13 single-tensor update, decoupled weight decay
 * p *= 1 - lr*wd) over the trainable tensors of an arena (oard_tensor_info().trainable);
 * padding slots and buffers are never read or written. A tensor whose gradient is zero
 * throughout a step is left alone with its own step count, as torch skips a parameter
 * without a gradient (modules the loss never reaches). Clipping is upstream's
 * DDPMModule.configure_gradient_clipping: limit = 1.5 mean + 3 std (numpy's, biased) of a
 * queue of the last 50 recorded norms that starts as [3000]; the gradient is scaled by
 * limit / (norm + 1e-6) when that is below 1 (torch's clip_grad_norm_, total 2-norm over
 * all trainable values), then min(norm, limit) is recorded. EMA: e = d e + (1 - d) p after
 * every step, starting from the initial parameters (timm ModelEmaV2 with decay d; note
 * that upstream's EMACallback(decay=x) hands ModelEmaV2 1 - x). */
typedef struct {
    double lr;           /* 2.5e-4 */
    double beta1, beta2; /* 0.9, 0.999 */
    double eps;          /* 1e-8 */
    double weight_decay; /* 0 */
    int amsgrad;         /* 1 */
    int clip;            /* 1: adaptive gradient clipping */
    double ema_decay;    /* 0: no EMA, else in (0, 1) */
} oard_optim_opts;

void oard_optim_defaults(oard_optim_opts *o); /* upstream's train_ts1x.py values above */

typedef struct oard_optim oard_optim;

/* An optimizer for the arena of model m (n is then oard_param_size(m), or 0 for that),
 * or, with m NULL, for a plain vector of n trainable values. params: the initial
 * parameters (the EMA starts from them). */
int oard_optim_new(const oard_model *m, size_t n, const oard_real *params, const oard_optim_opts *opts,
                   oard_optim **out, char *err);
void oard_optim_free(oard_optim *o);

typedef struct {
    long long step;    /* optimizer steps done, this one included */
    double grad_norm;  /* total 2-norm of the gradient before clipping */
    double clip_limit; /* the limit applied (0 without clipping) */
    int clipped;       /* the gradient was scaled down */
} oard_step_info;

/* Clip grad (in place), update params, then the EMA. A gradient with NaN or Inf is
 * refused (OARD_ERR_NUMERIC) and nothing changes. info may be NULL. */
int oard_optim_step(oard_optim *o, oard_real *params, oard_real *grad, oard_step_info *info, char *err);
long long oard_optim_steps(const oard_optim *o);
const oard_optim_opts *oard_optim_options(const oard_optim *o);
/* The EMA parameters (arena layout), or NULL without EMA. */
const oard_real *oard_optim_ema(const oard_optim *o);

/* ---- checkpoints ----
 * One file (temporary file PATH.tmp.<pid>, renamed) holding the model with the parameters
 * params (exactly, in the build's precision), the optimizer's whole state and the
 * caller's own NULL-terminated key, value list (keys without spaces, not starting with
 * "optim." or "array"; values one line). oard_checkpoint_load gives the model, an
 * optimizer in the saved state and the caller's list (*meta: key, value, ..., NULL, one
 * allocation: free(*meta)). A checkpoint is read by the build of the precision that
 * wrote it. */
int oard_checkpoint_save(const char *path, const oard_model *m, const oard_real *params, const oard_optim *o,
                         const char *const *meta, char *err);
int oard_checkpoint_load(const char *path, oard_model **m, oard_optim **o, char ***meta, char *err);

/* ---- structure comparison ----
 * RMSD (Angstrom, if the coordinates are) of two structures of n atoms after removing
 * translation, rotation and, unless OARD_RMSD_NO_REFLECTION, reflection; unless
 * OARD_RMSD_SAME_ORDER, also the order of atoms within each element (elem_* are any
 * integer labels, e.g. atomic numbers). Matching is by exhaustive search when there are
 * at most 10^4 element-preserving permutations (as upstream's evaluation), else by the
 * Hungarian method alternated with superposition from several start rotations.
 * OARD_RMSD_HUNGARIAN / OARD_RMSD_BRUTE force one of the two methods. */
enum { OARD_RMSD_SAME_ORDER = 1, OARD_RMSD_NO_REFLECTION = 2, OARD_RMSD_HUNGARIAN = 4, OARD_RMSD_BRUTE = 8 };
int oard_rmsd(int n, const int *elem_a, const double *xyz_a, const int *elem_b, const double *xyz_b, int flags,
              double *rmsd, char *err);

/* ---- utilities ---- */
uint32_t oard_crc32(uint32_t crc, const void *data, size_t n);
const char *oard_version(void);

/* The kernel code path in use: "generic", "avx2" or "avx512" in a portable x86 build (the
 * widest the CPU has, or the one OARD_ISA names if the CPU has it), "native" in a build for
 * one target (e.g. -march=native). Results differ between paths in the last bits only. */
const char *oard_kernel_path(void);

#ifdef __cplusplus
}
#endif
#endif
