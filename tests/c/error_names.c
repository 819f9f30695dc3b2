/* Prints ffa_error_name(code) for codes 0..31, one per line: the test compares them with the spec's table. */
#include <ffaccel.h>
#include <stdio.h>

int main(void)
{
	for (uint32_t code = 0; code < 32; code++)
		printf("%s\n", ffa_error_name(code));
	return 0;
}
