/* The C API from C without a model: every bad input is a status and a one-line message,
 * never a crash (also under ASan/UBSan). Run from the build folder (ctest). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchchat.h"

static int failures = 0;

#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

/* `status` is `expected`, and tc_last_error is one non-empty line containing `words`. */
static void expect(int status, int expected, const char* words) {
  const char* message = tc_last_error();
  if (status != expected) {
    fprintf(stderr, "expected %s, got %s: %s\n", tc_status_name(expected), tc_status_name(status), message);
    ++failures;
    return;
  }
  CHECK(message != NULL && message[0] != '\0');
  CHECK(strchr(message, '\n') == NULL);
  if (words != NULL && strstr(message, words) == NULL) {
    fprintf(stderr, "message '%s' lacks '%s'\n", message, words);
    ++failures;
  }
}

static void write_file(const char* path, const char* content, size_t length) {
  FILE* f = fopen(path, "wb");
  CHECK(f != NULL);
  if (f == NULL) return;
  fwrite(content, 1, length, f);
  fclose(f);
}

int main(void) {
  CHECK(tc_version() == TC_API_VERSION);
  CHECK(strcmp(tc_status_name(TC_ERR_BAD_SESSION), "TC_ERR_BAD_SESSION") == 0);
  CHECK(strcmp(tc_last_error(), "") == 0);

  tc_model* model = (tc_model*)0x1;
  expect(tc_model_open(NULL, NULL, &model), TC_ERR_INVALID_ARGUMENT, "NULL");
  CHECK(model == NULL);
  expect(tc_model_open("x", NULL, NULL), TC_ERR_INVALID_ARGUMENT, "NULL");
  expect(tc_model_open("no/such/model.so", NULL, &model), TC_ERR_IO, "no/such/model.so");
  expect(tc_model_open(".", NULL, &model), TC_ERR_IO, NULL);

  /* Files that are no model: text, an empty file, a truncated ELF header, a truncated zip, a
   * .pte's first bytes only. */
  write_file("c_api_text.bin", "hello, world\n", 13);
  expect(tc_model_open("c_api_text.bin", NULL, &model), TC_ERR_BAD_MODEL, "not a model");
  write_file("c_api_empty.bin", "", 0);
  expect(tc_model_open("c_api_empty.bin", NULL, &model), TC_ERR_BAD_MODEL, NULL);
  write_file("c_api_elf.so", "\x7f" "ELF\x02\x01\x01", 7);
  int status = tc_model_open("c_api_elf.so", NULL, &model);
  CHECK(status == TC_ERR_BAD_MODEL || status == TC_ERR_UNSUPPORTED);
  write_file("c_api_zip.pt2", "PK\x03\x04\x00\x00", 6);
  status = tc_model_open("c_api_zip.pt2", NULL, &model);
  CHECK(status == TC_ERR_BAD_MODEL || status == TC_ERR_UNSUPPORTED);
  write_file("c_api_pte.pte", "\x00\x00\x00\x00" "ET12\x00\x00", 10);
  status = tc_model_open("c_api_pte.pte", NULL, &model);
  CHECK(status == TC_ERR_BAD_MODEL || status == TC_ERR_UNSUPPORTED);
  CHECK(model == NULL);

  /* NULL and foreign handles: refused, never dereferenced. */
  tc_session* session = (tc_session*)0x1;
  expect(tc_session_open(NULL, NULL, &session), TC_ERR_INVALID_HANDLE, "model is NULL");
  CHECK(session == NULL);
  expect(tc_session_open((tc_model*)0x1234, NULL, &session), TC_ERR_INVALID_HANDLE, "not a model");
  expect(tc_model_close(NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_model_close((tc_model*)&failures), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_session_close(NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_chat(NULL, "hi", NULL, NULL, NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_generate(NULL, "hi", NULL, NULL, NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_session_cancel(NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_session_reset(NULL), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_session_save(NULL, "x"), TC_ERR_INVALID_HANDLE, NULL);
  size_t count = 0;
  expect(tc_session_last_tokens(NULL, NULL, 0, &count), TC_ERR_INVALID_HANDLE, NULL);
  expect(tc_session_load(NULL, "x", &session), TC_ERR_INVALID_HANDLE, NULL);
  tc_model_info info;
  expect(tc_model_info_get(NULL, &info), TC_ERR_INVALID_HANDLE, NULL);

  tc_session_config config;
  tc_session_config_init(&config);
  CHECK(config.temperature == 1.0f && config.top_p > 0.89f && config.top_p < 0.91f && config.system_prompt == NULL);
  tc_session_config_init(NULL); /* no crash */

  /* The message of a failed call stays until the next failure on this thread. */
  expect(tc_model_close(NULL), TC_ERR_INVALID_HANDLE, NULL);
  CHECK(tc_version() == TC_API_VERSION);
  CHECK(strstr(tc_last_error(), "NULL") != NULL);

  remove("c_api_text.bin");
  remove("c_api_empty.bin");
  remove("c_api_elf.so");
  remove("c_api_zip.pt2");
  remove("c_api_pte.pte");
  if (failures == 0) printf("ok\n");
  return failures == 0 ? 0 : 1;
}
