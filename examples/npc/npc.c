/*
 * npc: talk to the villagers. A terminal game on libtorchchat's C API.
 *
 *   npc MODEL [-z TOKENIZER] [-d SAVE_DIR] [-n MAX_REPLY_TOKENS] [-s SEED]
 *
 * Two villagers, each a session with a persona (system prompt) on the same model. Type to
 * talk to the one you are with; their reply streams as it is generated, cut at MAX_REPLY_TOKENS.
 *   /talk NAME   go to another villager (mira, tom)
 *   /who         who is here
 *   /quit        leave (end of input too)
 * Leaving saves every conversation in SAVE_DIR (default: .); the next game goes on from there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchchat.h"

/* ---- Villagers ---- */

typedef struct {
  const char* name;  /* what /talk takes, and the save file's name */
  const char* title; /* what the player sees */
  const char* persona;
  tc_session* session;
} Villager;

static Villager villagers[] = {
    {"mira", "Mira the baker",
     "You are Mira, the village baker. You are cheerful, you speak in short sentences, and you know all the "
     "gossip of the village. Stay in character.",
     NULL},
    {"tom", "Old Tom the smith",
     "You are Old Tom, the village blacksmith. You are gruff but kind, and you talk about iron, horses and "
     "the weather. Stay in character.",
     NULL},
};
enum { N_VILLAGERS = sizeof villagers / sizeof villagers[0] };

static Villager* find_villager(const char* name) {
  for (int i = 0; i < N_VILLAGERS; ++i)
    if (strcmp(villagers[i].name, name) == 0) return &villagers[i];
  return NULL;
}

static void save_path(char* out, size_t size, const char* dir, const Villager* v) {
  snprintf(out, size, "%s/%s.tcs", dir, v->name);
}

/* A villager's conversation: the saved one when there is one, else a new one. */
static int meet(tc_model* model, const char* dir, const tc_session_config* config, Villager* v) {
  char path[4096];
  save_path(path, sizeof path, dir, v);
  FILE* saved = fopen(path, "rb");
  if (saved != NULL) {
    fclose(saved);
    if (tc_session_load(model, path, &v->session) == TC_OK) {
      printf("[%s remembers you]\n", v->title);
      return 0;
    }
    printf("[%s has forgotten you: %s]\n", v->title, tc_last_error());
  }
  tc_session_config persona = *config;
  persona.system_prompt = v->persona;
  if (tc_session_open(model, &persona, &v->session) != TC_OK) {
    fprintf(stderr, "error: %s\n", tc_last_error());
    return 1;
  }
  return 0;
}

/* ---- Talking ---- */

static int print_text(void* user_data, const char* text, size_t length) {
  (void)user_data;
  fwrite(text, 1, length, stdout);
  fflush(stdout);
  return 0;
}

static void say(Villager* v, const char* line) {
  printf("%s: ", v->title);
  fflush(stdout);
  tc_stats stats;
  const tc_status status = tc_chat(v->session, line, print_text, NULL, &stats);
  printf("\n");
  if (status == TC_ERR_CONTEXT_FULL || (status == TC_OK && stats.stop_reason == TC_STOP_CONTEXT_FULL)) {
    /* A villager's memory is the model's context: when it is full, they start afresh. */
    printf("[%s looks puzzled and forgets what you talked about]\n", v->title);
    tc_session_reset(v->session);
  } else if (status != TC_OK) {
    printf("[%s]\n", tc_last_error());
  }
}

static int usage(const char* program) {
  fprintf(stderr, "usage: %s MODEL [-z TOKENIZER] [-d SAVE_DIR] [-n MAX_REPLY_TOKENS] [-s SEED]\n", program);
  return 2;
}

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return usage(argv[0]);
  const char* model_path = argv[1];
  const char* tokenizer = NULL;
  const char* dir = ".";
  tc_session_config config;
  tc_session_config_init(&config);
  config.max_tokens = 64;
  config.temperature = 0.7f;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) return usage(argv[0]);
    if (strcmp(argv[i], "-z") == 0) tokenizer = argv[i + 1];
    else if (strcmp(argv[i], "-d") == 0) dir = argv[i + 1];
    else if (strcmp(argv[i], "-n") == 0) config.max_tokens = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "-s") == 0) config.seed = strtoull(argv[i + 1], NULL, 10);
    else return usage(argv[0]);
  }
  if (config.max_tokens < 1) return usage(argv[0]);

  tc_model* model = NULL;
  if (tc_model_open(model_path, tokenizer, &model) != TC_OK) {
    fprintf(stderr, "error: %s\n", tc_last_error());
    return 1;
  }
  for (int i = 0; i < N_VILLAGERS; ++i) {
    if (meet(model, dir, &config, &villagers[i]) != 0) return 1;
  }
  Villager* here = &villagers[0];
  printf("You are in the village square. %s is here. (/talk NAME, /who, /quit)\n", here->title);

  char line[2048];
  for (;;) {
    printf("> ");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL) {
      printf("\n");
      break;
    }
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0') continue;
    if (strcmp(line, "/quit") == 0) break;
    if (strcmp(line, "/who") == 0) {
      for (int i = 0; i < N_VILLAGERS; ++i) printf("%s (/talk %s)\n", villagers[i].title, villagers[i].name);
      continue;
    }
    if (strncmp(line, "/talk ", 6) == 0) {
      Villager* v = find_villager(line + 6);
      if (v == NULL) printf("[nobody called %s lives here]\n", line + 6);
      else printf("[you walk over to %s]\n", (here = v)->title);
      continue;
    }
    say(here, line);
  }

  int status = 0;
  for (int i = 0; i < N_VILLAGERS; ++i) {
    char path[4096];
    save_path(path, sizeof path, dir, &villagers[i]);
    if (tc_session_save(villagers[i].session, path) != TC_OK) {
      fprintf(stderr, "error: %s\n", tc_last_error());
      status = 1;
    }
    tc_session_close(villagers[i].session);
  }
  tc_model_close(model);
  printf("[the village will remember you]\n");
  return status;
}
