/* Thin MicroPython binding over efm_core (our model-file evaluator). Built two ways from this one file:
 * as a native .mpy (Makefile, py/dynruntime.mk, MICROPY_ENABLE_DYNRUNTIME) or linked into the firmware as a
 * user C module (micropython.mk / micropython.cmake). Python API, used by firmware/node/model.py:
 *   efm.state_size() -> int            bytes of the state buffer the caller allocates (bytearray)
 *   efm.work_size(blob) -> int         bytes of the work buffer (expanded tree nodes) the caller allocates
 *   efm.load(state, blob, work)        parse the verified model file bytes; ValueError if invalid
 *   efm.predict(state, q, out) -> int  q: array('h') int16 features, out: array('f') scores
 *   efm.channel(x, out, base)          window features of one channel (contract 1, used by node/features.py):
 *                                      x array('f') of samples, out array('f'), written at out[base:base+12]
 * The caller keeps `blob` and `work` alive: the state points into them. */
#if MICROPY_ENABLE_DYNRUNTIME
#include "py/dynruntime.h"
#else
#include "py/runtime.h"
#include "py/obj.h"
#endif

#include "efm_core.h"

static mp_obj_t efm_state_size(void) {
    return mp_obj_new_int(sizeof(efm_model_t));
}
static MP_DEFINE_CONST_FUN_OBJ_0(efm_state_size_obj, efm_state_size);

static efm_model_t *state_of(mp_obj_t state) {
    mp_buffer_info_t st;
    mp_get_buffer_raise(state, &st, MP_BUFFER_RW);
    if (st.len < sizeof(efm_model_t) || ((uintptr_t)st.buf & 7u)) {
        mp_raise_ValueError(MP_ERROR_TEXT("efm: bad state buffer"));
    }
    return (efm_model_t *)st.buf;
}

static mp_obj_t efm_work_size_(mp_obj_t blob) {
    mp_buffer_info_t b;
    mp_get_buffer_raise(blob, &b, MP_BUFFER_READ);
    return mp_obj_new_int(efm_work_size((const uint8_t *)b.buf, b.len));
}
static MP_DEFINE_CONST_FUN_OBJ_1(efm_work_size_obj, efm_work_size_);

static mp_obj_t efm_load_(mp_obj_t state, mp_obj_t blob, mp_obj_t work) {
    efm_model_t *m = state_of(state);
    mp_buffer_info_t b, w;
    mp_get_buffer_raise(blob, &b, MP_BUFFER_READ);
    mp_get_buffer_raise(work, &w, MP_BUFFER_RW);
    const int err = efm_load(m, (const uint8_t *)b.buf, b.len, w.buf, w.len);
    if (err != EFM_OK) {
        mp_raise_ValueError(MP_ERROR_TEXT("efm: invalid model file"));
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(efm_load_obj, efm_load_);

static mp_obj_t efm_predict_(mp_obj_t state, mp_obj_t q_obj, mp_obj_t out_obj) {
    efm_model_t *m = state_of(state);
    mp_buffer_info_t q, out;
    mp_get_buffer_raise(q_obj, &q, MP_BUFFER_READ);
    mp_get_buffer_raise(out_obj, &out, MP_BUFFER_RW);
    if (q.typecode != 'h' || q.len < 2u * m->n_features || out.typecode != 'f') {
        mp_raise_ValueError(MP_ERROR_TEXT("efm: q must be array('h') of n_features, out array('f')"));
    }
    const int32_t r = efm_predict(m, (const int16_t *)q.buf, (float *)out.buf, (int)(out.len / 4));
    if (r < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("efm: prediction failed"));
    }
    return mp_obj_new_int(r);
}
static MP_DEFINE_CONST_FUN_OBJ_3(efm_predict_obj, efm_predict_);

static mp_obj_t efm_channel_(mp_obj_t x_obj, mp_obj_t out_obj, mp_obj_t base_obj) {
    mp_buffer_info_t x, out;
    mp_get_buffer_raise(x_obj, &x, MP_BUFFER_READ);
    mp_get_buffer_raise(out_obj, &out, MP_BUFFER_RW);
    const mp_int_t base = mp_obj_get_int(base_obj);
    const size_t n = x.len / 4;
    if (x.typecode != 'f' || out.typecode != 'f' || n < 2 || base < 0 || (size_t)base + EFM_PER_CHANNEL > out.len / 4) {
        mp_raise_ValueError(MP_ERROR_TEXT("efm: channel needs array('f') samples (>= 2) and room in out"));
    }
    efm_channel_features((const float *)x.buf, (int)n, (float *)out.buf + base);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(efm_channel_obj, efm_channel_);

#if MICROPY_ENABLE_DYNRUNTIME
mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_state_size, MP_OBJ_FROM_PTR(&efm_state_size_obj));
    mp_store_global(MP_QSTR_work_size, MP_OBJ_FROM_PTR(&efm_work_size_obj));
    mp_store_global(MP_QSTR_load, MP_OBJ_FROM_PTR(&efm_load_obj));
    mp_store_global(MP_QSTR_predict, MP_OBJ_FROM_PTR(&efm_predict_obj));
    mp_store_global(MP_QSTR_channel, MP_OBJ_FROM_PTR(&efm_channel_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
#else
static const mp_rom_map_elem_t efm_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_efm) },
    { MP_ROM_QSTR(MP_QSTR_state_size), MP_ROM_PTR(&efm_state_size_obj) },
    { MP_ROM_QSTR(MP_QSTR_work_size), MP_ROM_PTR(&efm_work_size_obj) },
    { MP_ROM_QSTR(MP_QSTR_load), MP_ROM_PTR(&efm_load_obj) },
    { MP_ROM_QSTR(MP_QSTR_predict), MP_ROM_PTR(&efm_predict_obj) },
    { MP_ROM_QSTR(MP_QSTR_channel), MP_ROM_PTR(&efm_channel_obj) },
};
static MP_DEFINE_CONST_DICT(efm_globals, efm_globals_table);

const mp_obj_module_t efm_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&efm_globals,
};
MP_REGISTER_MODULE(MP_QSTR_efm, efm_user_cmodule);
#endif
