/* The all-C baseline of bench/inference.py: window features (efm_core.c, contract 1 in float32) + int16
 * quantization with the model file's scaling (efm_core) + emlearn's generated forest (model.h), per window.
 * usage: features_harness MODEL.efm WINDOWS.bin N_CHANNELS N_SAMPLES REPEAT
 * Prints one class per window; "us_per_window=<f> us_features=<f>" (means over REPEAT passes) on stderr. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

/* one translation unit: emlearn's headers define non-static functions, so efm_core.c and model.h share them */
#include "efm_core.c"
#include "model.h"

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len + 8);
    if (buf && fread(buf, 1, *len, f) != *len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.efm WINDOWS.bin N_CHANNELS N_SAMPLES REPEAT\n", argv[0]);
        return 2;
    }
    (void)eml_error_str;
    size_t mlen = 0, wlen = 0;
    uint8_t *blob = slurp(argv[1], &mlen);
    float *win = (float *)slurp(argv[2], &wlen);
    const int nch = atoi(argv[3]), n = atoi(argv[4]), repeat = atoi(argv[5]);
    static efm_model_t m;
    if (!blob || !win || nch <= 0 || n < 2 || repeat <= 0) return 2;
    void *work = malloc(efm_work_size(blob, mlen) + 8);
    if (efm_load(&m, blob, mlen, work, efm_work_size(blob, mlen)) != EFM_OK) {
        fprintf(stderr, "bad model file %s\n", argv[1]);
        return 2;
    }
    const size_t per = (size_t)nch * (size_t)n, rows = wlen / 4 / per;
    float *feat = malloc(sizeof(float) * (size_t)nch * EFM_PER_CHANNEL);
    int16_t *q = malloc(sizeof(int16_t) * (size_t)nch * EFM_PER_CHANNEL);
    volatile int32_t sink = 0;
    double t_feat = 0.0;
    const double t0 = now_us();
    for (int k = 0; k < repeat; k++) {
        for (size_t r = 0; r < rows; r++) {
            const double a = now_us();
            for (int c = 0; c < nch; c++) efm_channel_features(win + r * per + (size_t)c * n, n, feat + c * EFM_PER_CHANNEL);
            t_feat += now_us() - a;
            efm_quantize(&m, feat, q);
            const int32_t cls = efm_model_predict(q, nch * EFM_PER_CHANNEL);
            sink += cls;
            if (k == 0) printf("%d\n", (int)cls);
        }
    }
    const double total = now_us() - t0;
    fprintf(stderr, "us_per_window=%.4f us_features=%.4f\n", total / ((double)repeat * rows), t_feat / ((double)repeat * rows));
    (void)sink;
    return 0;
}
