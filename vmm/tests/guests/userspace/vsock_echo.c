/*
 * vsock_echo: the guest side of the vsock test, in one static binary.
 *
 *   vsock_echo serve PORT N        accept N connections on PORT and echo
 *                                  every byte back on each, concurrently
 *                                  (one poll loop, no fork: every guest
 *                                  syscall is slow on kernel-emulating hosts)
 *   vsock_echo connect PORT N BYTES
 *                                  open N connections to the host (CID 2),
 *                                  send BYTES of a per-connection pattern on
 *                                  each, read the echo back and compare
 *
 * Each mode prints one "VSOCK-GUEST ..." result line and exits 0 on success.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_CONN 16
#define CHUNK 4096

static unsigned char pattern(int conn, long offset)
{
	return (unsigned char)(offset * 7 + conn * 31 + (offset >> 9));
}

static int serve(unsigned port, int n)
{
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int lfd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, MAX_CONN) < 0) {
		printf("VSOCK-GUEST serve failed: listen: %s\n", strerror(errno));
		return 1;
	}
	printf("VSOCK-GUEST listening on %u\n", port);
	fflush(stdout);
	int fds[MAX_CONN];
	for (int i = 0; i < n; i++) {
		fds[i] = accept(lfd, NULL, NULL);
		if (fds[i] < 0) {
			printf("VSOCK-GUEST serve failed: accept: %s\n", strerror(errno));
			return 1;
		}
	}
	long total = 0;
	int open = n;
	static char buf[CHUNK];
	while (open > 0) {
		struct pollfd p[MAX_CONN];
		for (int i = 0; i < n; i++)
			p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
		if (poll(p, n, -1) < 0) {
			printf("VSOCK-GUEST serve failed: poll: %s\n", strerror(errno));
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (fds[i] < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t r = read(fds[i], buf, sizeof(buf));
			if (r <= 0) {
				close(fds[i]);
				fds[i] = -1;
				open--;
				continue;
			}
			for (ssize_t done = 0; done < r;) {
				ssize_t w = write(fds[i], buf + done, r - done);
				if (w <= 0) {
					printf("VSOCK-GUEST serve failed: write: %s\n", strerror(errno));
					return 1;
				}
				done += w;
			}
			total += r;
		}
	}
	printf("VSOCK-GUEST served %d connections, echoed %ld bytes\n", n, total);
	return 0;
}

static int connect_all(unsigned port, int n, long bytes)
{
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port };
	int fds[MAX_CONN];
	long sent[MAX_CONN] = { 0 }, got[MAX_CONN] = { 0 };
	for (int i = 0; i < n; i++) {
		fds[i] = socket(AF_VSOCK, SOCK_STREAM, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			printf("VSOCK-GUEST connect failed: connection %d: %s\n", i, strerror(errno));
			return 1;
		}
	}
	/* Interleave writes and reads so neither side's buffers fill up. */
	static unsigned char buf[CHUNK];
	int done = 0;
	while (done < n) {
		struct pollfd p[MAX_CONN];
		for (int i = 0; i < n; i++) {
			short ev = 0;
			if (got[i] < bytes)
				ev |= POLLIN;
			if (sent[i] < bytes)
				ev |= POLLOUT;
			p[i] = (struct pollfd){ .fd = ev ? fds[i] : -1, .events = ev };
		}
		if (poll(p, n, 30000) <= 0) {
			printf("VSOCK-GUEST connect failed: poll timed out or failed\n");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (p[i].revents & POLLOUT) {
				long len = bytes - sent[i] < CHUNK ? bytes - sent[i] : CHUNK;
				for (long k = 0; k < len; k++)
					buf[k] = pattern(i, sent[i] + k);
				ssize_t w = write(fds[i], buf, len);
				if (w < 0) {
					printf("VSOCK-GUEST connect failed: write: %s\n", strerror(errno));
					return 1;
				}
				sent[i] += w;
			}
			if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
				ssize_t r = read(fds[i], buf, CHUNK);
				if (r <= 0) {
					printf("VSOCK-GUEST connect failed: connection %d closed after %ld bytes\n", i, got[i]);
					return 1;
				}
				for (ssize_t k = 0; k < r; k++) {
					if (buf[k] != pattern(i, got[i] + k)) {
						printf("VSOCK-GUEST connect failed: connection %d byte %ld differs\n", i, got[i] + k);
						return 1;
					}
				}
				got[i] += r;
				if (got[i] == bytes)
					done++;
			}
		}
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	printf("VSOCK-GUEST connect ok: %d connections, %ld bytes each echoed intact\n", n, bytes);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && strcmp(argv[1], "serve") == 0) {
		int n = atoi(argv[3]);
		if (n < 1 || n > MAX_CONN)
			return 2;
		return serve((unsigned)atoi(argv[2]), n);
	}
	if (argc >= 5 && strcmp(argv[1], "connect") == 0) {
		int n = atoi(argv[3]);
		if (n < 1 || n > MAX_CONN)
			return 2;
		return connect_all((unsigned)atoi(argv[2]), n, atol(argv[4]));
	}
	fprintf(stderr, "usage: vsock_echo serve PORT N | connect PORT N BYTES\n");
	return 2;
}
