


    // !!! This file is generated using emlearn !!!

    #include <eml_trees.h>
    

static const EmlTreesNode efm_model_nodes[40] = {
  { 21, -14832, 1, -1 },
  { 5, -6819, 1, -2 },
  { 15, -22113, -3, -4 },
  { 44, -26151, 1, 3 },
  { 35, -28854, 1, -1 },
  { 17, -22326, -3, -4 },
  { 3, 15715, 1, -2 },
  { 7, 16861, -4, -1 },
  { 1, 10972, 1, -1 },
  { 70, -26234, 1, -2 },
  { 3, -24912, -3, -4 },
  { 39, -28311, -3, 1 },
  { 56, -24874, 1, -2 },
  { 66, -12499, 1, -1 },
  { 0, -26941, -3, -4 },
  { 57, -29895, 1, 2 },
  { 18, -21176, -4, -3 },
  { 41, -22849, -4, 1 },
  { 3, 17990, 1, -2 },
  { 61, 8368, -2, -1 },
  { 3, 17713, 1, -2 },
  { 0, -13877, 1, -1 },
  { 50, 29012, 1, -3 },
  { 26, 15901, 1, -4 },
  { 65, -7736, -3, -2 },
  { 56, -23533, 1, -2 },
  { 53, -23343, 1, -1 },
  { 17, -21666, -3, 1 },
  { 31, 2183, -4, -3 },
  { 38, 16185, 1, 2 },
  { 40, -15818, -3, -2 },
  { 4, -6344, 1, -1 },
  { 52, -28091, -3, -4 },
  { 29, -17856, 1, 2 },
  { 16, -22184, -3, -4 },
  { 56, -24043, -1, -2 },
  { 1, 9550, 1, -1 },
  { 5, -25328, -3, 1 },
  { 47, -29305, -4, 1 },
  { 4, -15892, -3, -2 } 
};

static const int32_t efm_model_tree_roots[10] = { 0, 3, 8, 11, 15, 20, 25, 29, 33, 36 };

static const uint8_t efm_model_leaves[4] = { 1, 0, 2, 3 };

EmlTrees efm_model = {
        40,
        (EmlTreesNode *)(efm_model_nodes),	  
        10,
        (int32_t *)(efm_model_tree_roots),
        4,
        (uint8_t *)(efm_model_leaves),
        0,
        72,
        4,
    };

int32_t efm_model_predict(const int16_t *features, int32_t features_length) {

        const int out = eml_trees_predict(&efm_model, features, features_length);
        return out;

    }
    

int efm_model_predict_proba(const int16_t *features, int32_t features_length, float *out, int out_length) {

        const EmlError err =             eml_trees_predict_proba(&efm_model, features, features_length, out, out_length);
        return err;

    }
    