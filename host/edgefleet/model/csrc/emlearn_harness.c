/* Host C harness for a generated model.h (emlearn C code): reads rows of features from a binary file and
 * prints one prediction per line. Built by edgefleet.parity with gcc -Wall -Werror.
 *   -DEFM_INPUT_INT16   rows are int16 (tree models); else float32
 *   -DEFM_OUTPUT_FLOAT  the model returns a float (regression value, elliptic distance); else a class
 *   -DEFM_NET           model.h is an emlearn net (eml_net.h)
 *   -DEFM_ELLIPTIC      model.h is an emlearn elliptic envelope (eml_distance.h)
 * usage: harness FEATURES.bin N_FEATURES [REPEAT]
 * With REPEAT, predictions are printed once and the mean time per prediction over REPEAT passes goes to
 * stderr as "us_per_predict=<float>" (the benchmark's C baseline).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <stdint.h>

#ifdef EFM_ELLIPTIC
/* emlearn 0.23's generated elliptic-envelope function keeps an unused local `class`: a defect of the
 * generator, not of the model; only that warning is relaxed, and only for this model kind. */
#pragma GCC diagnostic ignored "-Wunused-variable"
#endif
#include "model.h"

#ifdef EFM_INPUT_INT16
typedef int16_t efm_in_t;
#else
typedef float efm_in_t;
#endif

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s FEATURES.bin N_FEATURES [REPEAT]\n", argv[0]);
        return 2;
    }
    (void)eml_error_str; /* eml_common.h's static helper: referenced so -Wunused-function stays quiet */
#ifdef EFM_NET
    (void)eml_net_activation_function_strs; /* likewise for eml_net_common.h */
#endif
    const int n = atoi(argv[2]);
    FILE *f = fopen(argv[1], "rb");
    if (!f || n <= 0 || n > 4096) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    const int repeat = argc == 4 ? atoi(argv[3]) : 0;
    size_t cap = 64, rows = 0;
    efm_in_t *data = malloc(cap * (size_t)n * sizeof(efm_in_t));
    while (data && fread(data + rows * (size_t)n, sizeof(efm_in_t), (size_t)n, f) == (size_t)n) {
        if (++rows == cap) {
            cap *= 2;
            data = realloc(data, cap * (size_t)n * sizeof(efm_in_t));
        }
    }
    if (!data) return 2;
    for (size_t r = 0; r < rows; r++) {
#ifdef EFM_OUTPUT_FLOAT
        printf("%.9g\n", (double)efm_model_predict(data + r * (size_t)n, n));
#else
        printf("%d\n", (int)efm_model_predict(data + r * (size_t)n, n));
#endif
    }
    if (repeat > 0 && rows > 0) {
        volatile double sink = 0.0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int k = 0; k < repeat; k++)
            for (size_t r = 0; r < rows; r++) sink += (double)efm_model_predict(data + r * (size_t)n, n);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3);
        fprintf(stderr, "us_per_predict=%.4f\n", us / ((double)repeat * (double)rows));
        (void)sink;
    }
    free(data);
    fclose(f);
    return 0;
}
