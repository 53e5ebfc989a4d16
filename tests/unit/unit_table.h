/*
 * unit_table: run every row of a case table as its own named cmocka test,
 * so a failure names the row. Include after <cmocka.h>.
 */
#ifndef SPAMTRAPD_UNIT_TABLE_H
#define SPAMTRAPD_UNIT_TABLE_H

#include <stddef.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Adds the number of failed rows to failed. Each row needs a .name. */
#define RUN_TABLE(group, cases, fn, failed)                                                                  \
	do {                                                                                                 \
		struct CMUnitTest t_[NELEM(cases)];                                                          \
		for (size_t i_ = 0; i_ < NELEM(cases); i_++)                                                 \
			t_[i_] = (struct CMUnitTest){                                                        \
			    .name = (cases)[i_].name, .test_func = (fn), .initial_state = &(cases)[i_]};     \
		(failed) += cmocka_run_group_tests_name(group, t_, NULL, NULL);                              \
	} while (0)

#endif
