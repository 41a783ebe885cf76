/* See efm_core.h. Layout constants mirror host/edgefleet/modelfile.py, the one definition of the format. */
#include "efm_core.h"

#include <string.h>

#include <eml_trees.h>

#define HEADER_SIZE 32
#define TRAILER_SIZE 64

_Static_assert(sizeof(EmlTreesNode) == 8, "EmlTreesNode must match the file's 8-byte node");

static const char *const efm_errors[EFM_ERR_COUNT] = {
    "ok", "bad magic", "unsupported version", "length mismatch", "unknown kind or task",
    "model exceeds this build's limits", "corrupt model body", "buffer not 4-byte aligned", "prediction failed",
};

const char *efm_error_str(int err) {
    (void)eml_error_str; /* eml_common.h's static helper; referenced so -Wunused-function stays quiet */
    return (err >= 0 && err < EFM_ERR_COUNT) ? efm_errors[err] : "unknown error";
}

static uint16_t u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static size_t pad4(size_t n) { return (n + 3u) & ~(size_t)3u; }

/* No libc/libm beyond memset/memcpy: a native .mpy links without them (mpy_ld has no libm on every arch). */
static float efm_floorf(float v) {
    const float t = (float)(int32_t)v;
    return t > v ? t - 1.0f : t;
}

static float efm_expf(float x) {
    /* exp(x) = 2^k * exp(r), |r| <= ln2/2; degree-6 Taylor on r: relative error < 1e-7 */
    if (x > 88.0f) x = 88.0f;
    if (x < -87.0f) return 0.0f;
    const float ln2 = 0.69314718f;
    const int32_t k = (int32_t)efm_floorf(x / ln2 + 0.5f);
    const float r = x - (float)k * ln2;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union { float f; int32_t i; } u = { .f = p };
    u.i += k << 23;
    return u.f;
}

static int magic_ok(const uint8_t *b) { return b[0] == 'E' && b[1] == 'F' && b[2] == 'M' && b[3] == 'L'; }

static int load_trees(efm_model_t *m, const uint8_t *b, size_t blen, void *work, size_t work_len) {
    if (blen < 8) return EFM_ERR_CORRUPT;
    const uint16_t n_trees = u16(b), n_nodes = u16(b + 2), n_leaves = u16(b + 4);
    const uint8_t leaf_bits = b[6], node_format = b[7];
    if (n_trees == 0 || n_trees > EFM_MAX_TREES) return EFM_ERR_LIMIT;
    if ((leaf_bits != 0 && leaf_bits != 32) || node_format > 1) return EFM_ERR_CORRUPT;
    const size_t node_size = node_format ? 6u : 8u;
    const size_t nodes_at = pad4(8 + 2u * n_trees);
    const size_t leaves_at = nodes_at + pad4(node_size * n_nodes);
    const size_t leaves_len = (size_t)n_leaves * (leaf_bits ? 4u : 1u);
    if (leaves_at + leaves_len > blen) return EFM_ERR_CORRUPT;
    for (int t = 0; t < n_trees; t++) {
        m->roots[t] = u16(b + 8 + 2 * t);
        if (m->roots[t] >= n_nodes) return EFM_ERR_CORRUPT;
    }
    const EmlTreesNode *nodes = (const EmlTreesNode *)(b + nodes_at);
    if (node_format == 1) {
        /* compact preorder nodes: u8 feature, u8 left leaf (0xFF = next node), i16 threshold, i16 right */
        if (work == NULL || work_len < 8u * n_nodes || ((uintptr_t)work & 3u)) return EFM_ERR_LIMIT;
        EmlTreesNode *x = (EmlTreesNode *)work;
        for (int i = 0; i < n_nodes; i++) {
            const uint8_t *p = b + nodes_at + 6u * i;
            x[i].feature = (int8_t)p[0];
            x[i].value = (int16_t)u16(p + 2);
            x[i].left = p[1] == 0xFF ? 1 : (int16_t)(-(int)p[1] - 1);
            x[i].right = (int16_t)u16(p + 4);
        }
        nodes = x;
    }
    for (int i = 0; i < n_nodes; i++) {
        if (nodes[i].feature < 0 || nodes[i].feature >= m->n_features) return EFM_ERR_CORRUPT;
        const int16_t kids[2] = {nodes[i].left, nodes[i].right};
        for (int k = 0; k < 2; k++) {
            if (kids[k] >= 0 && (kids[k] == 0 || i + kids[k] >= n_nodes)) return EFM_ERR_CORRUPT; /* forward only */
            if (kids[k] < 0 && -kids[k] - 1 >= n_leaves) return EFM_ERR_CORRUPT;
        }
    }
    if (!leaf_bits) {
        for (int i = 0; i < n_leaves; i++)
            if (b[leaves_at + i] >= m->n_classes) return EFM_ERR_CORRUPT;
    }
    m->n_trees = n_trees;
    m->n_nodes = n_nodes;
    m->n_leaves = n_leaves;
    m->leaf_bits = leaf_bits;
    m->nodes = nodes;
    m->leaves = b + leaves_at;
    return EFM_OK;
}

static int load_mlp(efm_model_t *m, const uint8_t *b, size_t blen) {
    if (blen < 4) return EFM_ERR_CORRUPT;
    m->n_layers = b[0];
    if (m->n_layers == 0 || m->n_layers > EFM_MAX_LAYERS) return EFM_ERR_LIMIT;
    size_t pos = 4;
    uint16_t width = m->n_features;
    for (int l = 0; l < m->n_layers; l++) {
        if (pos + 8 > blen) return EFM_ERR_CORRUPT;
        efm_layer_t *L = &m->layers[l];
        L->n_in = u16(b + pos);
        L->n_out = u16(b + pos + 2);
        L->activation = b[pos + 4];
        pos += 8;
        if (L->n_in != width || L->n_out == 0 || L->n_out > EFM_MAX_WIDTH || L->activation > 4) return EFM_ERR_CORRUPT;
        const size_t need = 4u * ((size_t)L->n_in * L->n_out + L->n_out);
        if (pos + need > blen) return EFM_ERR_CORRUPT;
        L->weights = (const float *)(b + pos);
        L->bias = L->weights + (size_t)L->n_in * L->n_out;
        pos += need;
        width = L->n_out;
    }
    if (m->task == EFM_TASK_CLASSIFY && (width != m->n_classes || width > EFM_MAX_OUTPUTS)) return EFM_ERR_CORRUPT;
    return EFM_OK;
}

size_t efm_work_size(const uint8_t *buf, size_t len) {
    if (len < HEADER_SIZE + TRAILER_SIZE || !magic_ok(buf) || buf[6] != EFM_KIND_TREES) return 0;
    const size_t body_at = HEADER_SIZE + (size_t)u32(buf + 20) + 8u * u16(buf + 8);
    if (body_at + 8 > len || buf[body_at + 7] != 1) return 0;
    return 8u * u16(buf + body_at + 2);
}

int efm_load(efm_model_t *m, const uint8_t *buf, size_t len, void *work, size_t work_len) {
    memset(m, 0, sizeof(*m));
    if (((uintptr_t)buf & 3u) != 0) return EFM_ERR_ALIGN;
    if (len < HEADER_SIZE + TRAILER_SIZE || !magic_ok(buf)) return EFM_ERR_MAGIC;
    if (u16(buf + 4) != 1) return EFM_ERR_VERSION;
    m->kind = buf[6];
    m->task = buf[7];
    m->n_features = u16(buf + 8);
    m->n_classes = u16(buf + 10);
    m->window = u16(buf + 12);
    m->hop = u16(buf + 14);
    memcpy(&m->threshold, buf + 16, 4);
    const uint32_t slen = u32(buf + 20), blen = u32(buf + 24);
    if (m->kind < EFM_KIND_TREES || m->kind > EFM_KIND_GAUSS || m->task > EFM_TASK_REGRESS) return EFM_ERR_KIND;
    if (m->n_features == 0 || m->n_features > EFM_MAX_FEATURES || m->n_classes > EFM_MAX_OUTPUTS) return EFM_ERR_LIMIT;
    const size_t scaling_at = HEADER_SIZE + (size_t)slen;
    const size_t body_at = scaling_at + 8u * m->n_features;
    if ((slen & 3u) || (blen & 3u) || body_at + blen + TRAILER_SIZE != len) return EFM_ERR_LENGTH;
    m->offset = (const float *)(buf + scaling_at);
    m->scale = m->offset + m->n_features;
    const uint8_t *body = buf + body_at;
    if (m->kind == EFM_KIND_TREES) return load_trees(m, body, blen, work, work_len);
    if (m->kind == EFM_KIND_MLP) return load_mlp(m, body, blen);
    const size_t nf = m->n_features;
    if (4u * (nf + nf * nf) > blen) return EFM_ERR_CORRUPT;
    m->mean = (const float *)body;
    m->precision = m->mean + nf;
    return EFM_OK;
}

void efm_quantize(const efm_model_t *m, const float *x, int16_t *q) {
    for (int i = 0; i < m->n_features; i++) {
        float v = (x[i] - m->offset[i]) * m->scale[i] + 0.5f;
        if (!(v == v)) v = 0.0f; /* NaN (a sensor gap): the centre of the training range, as host and node */
        if (v > 32767.0f) v = 32767.0f;
        if (v < -32767.0f) v = -32767.0f;
        q[i] = (int16_t)efm_floorf(v);
    }
}

static int32_t predict_mlp(const efm_model_t *m, const int16_t *q, float *out, int out_len) {
    float a[EFM_MAX_WIDTH], b[EFM_MAX_WIDTH];
    for (int i = 0; i < m->n_features; i++) a[i] = q[i] / 32768.0f;
    int width = m->n_features;
    for (int l = 0; l < m->n_layers; l++) {
        const efm_layer_t *L = &m->layers[l];
        for (int o = 0; o < L->n_out; o++) {
            float s = L->bias[o];
            const float *w = L->weights + (size_t)o * L->n_in;
            for (int i = 0; i < L->n_in; i++) s += w[i] * a[i];
            if (L->activation == 1 && s < 0.0f) s = 0.0f;
            else if (L->activation == 3) s = 1.0f / (1.0f + efm_expf(-s));
            else if (L->activation == 4) s = 1.0f - 2.0f / (efm_expf(2.0f * s) + 1.0f);
            b[o] = s;
        }
        if (L->activation == 2) {
            float mx = b[0], t = 0.0f;
            for (int o = 0; o < L->n_out; o++) mx = b[o] > mx ? b[o] : mx;
            for (int o = 0; o < L->n_out; o++) t += (b[o] = efm_expf(b[o] - mx));
            for (int o = 0; o < L->n_out; o++) b[o] /= t;
        }
        width = L->n_out;
        memcpy(a, b, sizeof(float) * (size_t)width);
    }
    if (out_len < width) return -EFM_ERR_LIMIT;
    int32_t best = 0;
    for (int o = 0; o < width; o++) {
        out[o] = a[o];
        if (a[o] > a[best]) best = o;
    }
    return m->task == EFM_TASK_CLASSIFY ? best : 0;
}

static int32_t predict_gauss(const efm_model_t *m, const int16_t *q, float *out) {
    const int n = m->n_features;
    float d[EFM_MAX_FEATURES];
    for (int i = 0; i < n; i++) d[i] = q[i] / 32768.0f - m->mean[i];
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        float r = 0.0f;
        for (int j = 0; j < n; j++) r += m->precision[(size_t)i * n + j] * d[j];
        s += r * d[i];
    }
    out[0] = s;
    return s > m->threshold ? 1 : 0;
}

int32_t efm_predict(const efm_model_t *m, const int16_t *q, float *out, int out_len) {
    if (out_len < 1 || out_len < m->n_classes) return -EFM_ERR_LIMIT;
    if (m->kind == EFM_KIND_MLP) return predict_mlp(m, q, out, out_len);
    if (m->kind == EFM_KIND_GAUSS) return predict_gauss(m, q, out);
    const EmlTrees trees = {
        m->n_nodes, (EmlTreesNode *)m->nodes, m->n_trees, (int32_t *)m->roots,
        m->n_leaves, (uint8_t *)m->leaves, (int8_t)m->leaf_bits, (int8_t)m->n_features, (int8_t)m->n_classes,
    };
    if (m->task == EFM_TASK_REGRESS) {
        out[0] = eml_trees_regress1(&trees, q, (int8_t)m->n_features);
        return 0;
    }
    if (eml_trees_predict_proba(&trees, q, (int8_t)m->n_features, out, m->n_classes) != EmlOk)
        return -EFM_ERR_PREDICT;
    const int32_t cls = eml_trees_predict(&trees, q, (int8_t)m->n_features);
    return cls < 0 ? -EFM_ERR_PREDICT : cls;
}

/* ---------------------------------------------------------------- window features (contract 1) */

/* No libm here (a native .mpy links only libgcc): sqrt by Newton's method and cos by a Taylor series after
 * range reduction, both in double, then rounded to float once: within float32 rounding of the library calls. */
static double efm_sqrt(double v) {
    if (v <= 0.0) return 0.0;
    double r = v > 1.0 ? v : 1.0;
    for (int i = 0; i < 200; i++) {
        const double next = 0.5 * (r + v / r);
        if (next >= r) break;
        r = next;
    }
    return r;
}

static double efm_cos(double x) {
    const double two_pi = 6.283185307179586;
    x -= two_pi * (double)(long long)(x / two_pi);
    if (x < 0) x += two_pi;
    double sign = 1.0;
    if (x > 3.141592653589793) x = two_pi - x; /* cos(2pi - x) = cos x */
    if (x > 1.5707963267948966) {
        x = 3.141592653589793 - x; /* cos(pi - x) = -cos x */
        sign = -1.0;
    }
    const double x2 = x * x;
    double term = 1.0, sum = 1.0;
    for (int k = 1; k < 12; k++) {
        term *= -x2 / ((2.0 * k - 1.0) * (2.0 * k));
        sum += term;
    }
    return sign * sum;
}

/* BAND_EDGES (0, 1/16, 1/8, 1/4, 1/2) as sixteenths: bin k of n is in band b when E[b] <= 16k/n < E[b+1];
 * the last band includes the Nyquist bin. Integer compares: no rounding at the edges. */
static int efm_band_of_bin(int k, int n) {
    static const int E[5] = {0, 1, 2, 4, 8};
    for (int b = 0; b < 4; b++) {
        if ((long)E[b] * n <= 16L * k && (16L * k < (long)E[b + 1] * n || (b == 3 && 16L * k == 8L * n))) return b;
    }
    return -1;
}

void efm_channel_features(const float *x, int n, float *out) {
    float s = 0.0f, sq = 0.0f, lo = x[0], hi = x[0];
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        s += v;
        sq += v * v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    const float nf = (float)n;
    const float mean = s / nf;
    float var = sq / nf - mean * mean;
    if (var < 0.0f) var = 0.0f;
    int crossings = 0;
    int prev = x[0] >= mean;
    const float im = (float)((n - 1) / 2.0);
    float sxy = 0.0f;
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        const int pos = v >= mean;
        if (pos != prev) crossings++;
        prev = pos;
        sxy += ((float)i - im) * (v - mean);
    }
    const float sxx = (float)((double)n * ((double)n * n - 1.0) / 12.0);
    out[0] = mean;
    out[1] = (float)efm_sqrt(var);
    out[2] = lo;
    out[3] = hi;
    out[4] = (float)efm_sqrt(sq / nf);
    out[5] = hi - lo;
    out[6] = n > 1 ? (float)crossings / (float)(n - 1) : 0.0f;
    out[7] = n > 1 ? sxy / sxx : 0.0f;
    float *band = out + 8;
    int counts[4] = {0, 0, 0, 0};
    for (int b = 0; b < 4; b++) band[b] = 0.0f;
    const float nn = (float)n * (float)n;
    for (int k = 1; k <= n / 2; k++) {
        const int b = efm_band_of_bin(k, n);
        if (b < 0) continue;
        const float coeff = (float)(2.0 * efm_cos(6.283185307179586 * k / n));
        float s1 = 0.0f, s2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const float s0 = (x[i] - mean) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        float p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        if (p < 0.0f) p = 0.0f;
        band[b] += p / nn;
        counts[b]++;
    }
    for (int b = 0; b < 4; b++) {
        if (counts[b]) band[b] = band[b] / (float)counts[b];
    }
}
