# User C module `efm` for CMake firmware builds (ESP32 port with ESP-IDF):
#   idf.py -D USER_C_MODULES=/path/to/firmware/cmodule/micropython.cmake -D EMLEARN_INCLUDE=... build
add_library(usermod_efm INTERFACE)
target_sources(usermod_efm INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}/efm_module.c
    ${CMAKE_CURRENT_LIST_DIR}/efm_core.c
)
if(NOT EMLEARN_INCLUDE)
    execute_process(COMMAND python3 -c "import emlearn; print(emlearn.includedir)"
                    OUTPUT_VARIABLE EMLEARN_INCLUDE OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
target_include_directories(usermod_efm INTERFACE ${CMAKE_CURRENT_LIST_DIR} ${EMLEARN_INCLUDE})
# no fused multiply-add (Xtensa madd.s): the features round like their Python definition
target_compile_options(usermod_efm INTERFACE -ffp-contract=off)
target_link_libraries(usermod INTERFACE usermod_efm)
