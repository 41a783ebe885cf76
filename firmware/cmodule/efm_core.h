/* edgefleet model file (EFML v1, docs/model-file.md) evaluated in plain C: no MicroPython headers.
 * Trees run on emlearn's eml_trees.h, on the file's bytes (node format 0) or on nodes expanded into a
 * caller's work buffer (compact node format 1); MLP and elliptic
 * envelope bodies run on small loops that mirror firmware/node/model.py. The bytes must stay alive and be
 * 4-byte aligned while the model is used. Integrity (sha256, HMAC) is checked by the caller before loading.
 */
#ifndef EFM_CORE_H
#define EFM_CORE_H

#include <stddef.h>
#include <stdint.h>

/* emlearn's eml_trees.h defines functions, so only efm_core.c includes it; the model keeps the arrays. */

#define EFM_MAX_TREES 64
#define EFM_MAX_FEATURES 127
#define EFM_MAX_OUTPUTS 32
#define EFM_MAX_LAYERS 8
#define EFM_MAX_WIDTH 256

enum { EFM_TASK_CLASSIFY = 0, EFM_TASK_ANOMALY = 1, EFM_TASK_REGRESS = 2 };
enum { EFM_KIND_TREES = 1, EFM_KIND_MLP = 2, EFM_KIND_GAUSS = 3 };

typedef enum {
    EFM_OK = 0,
    EFM_ERR_MAGIC,
    EFM_ERR_VERSION,
    EFM_ERR_LENGTH,
    EFM_ERR_KIND,
    EFM_ERR_LIMIT,
    EFM_ERR_CORRUPT,
    EFM_ERR_ALIGN,
    EFM_ERR_PREDICT,
    EFM_ERR_COUNT
} efm_error_t;

typedef struct {
    uint16_t n_in, n_out;
    uint8_t activation;
    const float *weights; /* [n_out][n_in] */
    const float *bias;    /* [n_out] */
} efm_layer_t;

typedef struct {
    uint8_t kind, task;
    uint16_t n_features, n_classes, window, hop;
    float threshold;
    const float *offset, *scale;
    /* trees */
    uint16_t n_trees, n_nodes, n_leaves;
    uint8_t leaf_bits;
    const void *nodes; /* EmlTreesNode[n_nodes], inside the file's bytes */
    const uint8_t *leaves;
    int32_t roots[EFM_MAX_TREES];
    /* mlp */
    uint8_t n_layers;
    efm_layer_t layers[EFM_MAX_LAYERS];
    /* gauss */
    const float *mean, *precision;
} efm_model_t;

const char *efm_error_str(int err);
/* Bytes of RAM efm_load needs in `work` for this file: 8 per tree node when the file uses the compact
 * 6-byte node format (expanded to emlearn's EmlTreesNode), else 0. */
size_t efm_work_size(const uint8_t *buf, size_t len);
/* Parse the model file's bytes (the whole file, trailer included). `work` (4-byte aligned, efm_work_size
 * bytes, may be NULL when that is 0) must stay alive with the model. */
int efm_load(efm_model_t *m, const uint8_t *buf, size_t len, void *work, size_t work_len);
/* Quantize float features to the int16 the model consumes, with the file's scaling. */
void efm_quantize(const efm_model_t *m, const float *x, int16_t *q);
/* Evaluate: returns the class index (classify), 0/1 (anomaly) or 0 (regress), or -efm_error_t.
 * out[0..] receives class scores (classify), the score (anomaly) or the value (regress). */
int32_t efm_predict(const efm_model_t *m, const int16_t *q, float *out, int out_len);

/* Window features of one channel (contract 1: firmware/node/features.py is the definition; this computes
 * the same thing in float32, in the same order of operations): x[0..n-1] -> out[0..EFM_PER_CHANNEL-1]. */
#define EFM_PER_CHANNEL 12
void efm_channel_features(const float *x, int n, float *out);

#endif
