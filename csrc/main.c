#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "gpsdrec: commands are not wired yet\n");
    return 1;
}
