/* Host C harness for our C core (firmware/cmodule/efm_core.c): loads a model file's bytes, evaluates rows
 * of int16 features and prints "index score" per line. Built by edgefleet.parity with gcc -Wall -Werror.
 * usage: efm_harness MODEL.efm FEATURES.bin
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

#include "efm_core.h"

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 4);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.efm FEATURES.bin\n", argv[0]);
        return 2;
    }
    size_t len = 0;
    uint8_t *blob = read_all(argv[1], &len);
    if (!blob) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    efm_model_t model;
    const size_t work_len = efm_work_size(blob, len);
    void *work = work_len ? malloc(work_len) : NULL;
    const int err = efm_load(&model, blob, len, work, work_len);
    if (err != EFM_OK) {
        fprintf(stderr, "efm_load: %s\n", efm_error_str(err));
        return 3;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) return 2;
    int16_t row[EFM_MAX_FEATURES];
    float out[EFM_MAX_OUTPUTS];
    while (fread(row, sizeof(int16_t), model.n_features, f) == model.n_features) {
        const int32_t idx = efm_predict(&model, row, out, EFM_MAX_OUTPUTS);
        if (idx < 0) {
            fprintf(stderr, "efm_predict: %s\n", efm_error_str(-idx));
            return 4;
        }
        printf("%d %.9g\n", (int)idx, (double)out[model.task == EFM_TASK_CLASSIFY ? idx : 0]);
    }
    fclose(f);
    free(work);
    free(blob);
    return 0;
}
