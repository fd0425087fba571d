/*
 * lab-minimal's sudo: runs a command as root for members of group wheel
 * (gid 10), without a password, like the NOPASSWD rule EC2's images give
 * their default user. Installed setuid root. Only `sudo CMD [ARGS...]` and
 * `sudo -i` (a root login shell) are supported.
 */
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WHEEL 10

static int in_wheel(void)
{
	gid_t groups[64];
	int n = getgroups(64, groups);
	if (getgid() == WHEEL)
		return 1;
	for (int i = 0; i < n; i++)
		if (groups[i] == WHEEL)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	if (getuid() != 0 && !in_wheel()) {
		fprintf(stderr, "sudo: you are not in group wheel\n");
		return 1;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: sudo COMMAND [ARGS...] | sudo -i\n");
		return 1;
	}
	if (setgroups(0, NULL) != 0 || setgid(0) != 0 || setuid(0) != 0) {
		perror("sudo: cannot become root");
		return 1;
	}
	if (strcmp(argv[1], "-i") == 0) {
		execl("/bin/sh", "-sh", (char *)NULL);
		perror("sudo: /bin/sh");
		return 127;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "sudo: %s: ", argv[1]);
	perror(NULL);
	return 127;
}
