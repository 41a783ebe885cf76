# User C module `efm` for firmware builds with make (ESP32 port: make USER_C_MODULES=.../firmware/cmodule).
# EMLEARN_INCLUDE must point at emlearn's headers: python -c "import emlearn; print(emlearn.includedir)"
EFM_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(EFM_MOD_DIR)/efm_module.c $(EFM_MOD_DIR)/efm_core.c
CFLAGS_USERMOD += -I$(EFM_MOD_DIR) -I$(EMLEARN_INCLUDE) -ffp-contract=off
