/* Prints the library's API version; given MODEL [TOKENIZER], opens it and describes it. */
#include <stdio.h>

#include <torchchat.h>

int main(int argc, char** argv) {
  printf("torchchat %d (header %d)\n", tc_version(), TC_API_VERSION);
  if (argc < 2) return 0;
  tc_model* model = NULL;
  if (tc_model_open(argv[1], argc > 2 ? argv[2] : NULL, &model) != TC_OK) {
    fprintf(stderr, "error: %s\n", tc_last_error());
    return 1;
  }
  tc_model_info info;
  tc_model_info_get(model, &info);
  printf("%s\n", info.description);
  tc_model_close(model);
  return 0;
}
