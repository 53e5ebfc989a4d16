/*
 * replay_main: a main() for a fuzz target without libFuzzer, so that the
 * seed corpus and every crash found so far run in the normal (gcc, ASan and
 * UBSan) test build: `fuzz_replay_<target> DIR|FILE...` feeds each file, in
 * name order, to LLVMFuzzerTestOneInput. A target reports a broken
 * invariant by aborting, which fails the ctest entry. A folder that does not
 * exist holds no input (fuzz/regressions/<target>/ appears with the first
 * crash), but at least one input must run in all. Files whose name starts
 * with '.' are skipped. Exit 0 when every input ran, 1 on a read error.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file; the buffer has exactly its size so ASan sees any read past the input. */
static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *data = NULL;
	long size;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		if (f != NULL)
			fclose(f);
		return -1;
	}
	data = malloc(size > 0 ? (size_t)size : 1);
	if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) {
		fprintf(stderr, "replay: %s: cannot read\n", path);
		free(data);
		fclose(f);
		return -1;
	}
	fclose(f);
	fprintf(stderr, "replay: %s (%ld bytes)\n", path, size);
	LLVMFuzzerTestOneInput(data, (size_t)size);
	free(data);
	return 0;
}

static int skip_hidden(const struct dirent *e)
{
	return e->d_name[0] != '.';
}

/* Runs every file of dir in name order; adds them to *count. */
static int run_dir(const char *dir, size_t *count)
{
	struct dirent **names;
	int n = scandir(dir, &names, skip_hidden, alphasort), rc = 0;

	if (n < 0) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
		if (rc == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			rc = run_file(path);
			(*count)++;
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

int main(int argc, char **argv)
{
	size_t count = 0;
	struct stat st;

	for (int i = 1; i < argc; i++) {
		int rc;

		if (stat(argv[i], &st) != 0) {
			if (errno != ENOENT) {
				fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
				return 1;
			}
			fprintf(stderr, "replay: %s: no such folder, no inputs\n", argv[i]);
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			rc = run_dir(argv[i], &count);
		} else {
			rc = run_file(argv[i]);
			count++;
		}
		if (rc != 0)
			return 1;
	}
	if (count == 0) {
		fprintf(stderr, "replay: no inputs at all\n");
		return 1;
	}
	fprintf(stderr, "replay: %zu inputs, no invariant broken\n", count);
	return 0;
}
