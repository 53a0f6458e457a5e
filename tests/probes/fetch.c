/* fetch HOST PORT: resolve HOST with the C library's resolver (getaddrinfo:
 * /etc/hosts, then DNS), connect over TCP, send "GET / HTTP/1.0" and print
 * the answer. Built with musl-gcc -static by the tests, so that a container
 * resolves names as an Alpine (musl) program does. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct addrinfo hints = {0}, *found;
    char buffer[4096];
    ssize_t got;
    int fd, status;

    if (argc != 3) {
        fprintf(stderr, "usage: fetch HOST PORT\n");
        return 2;
    }
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    status = getaddrinfo(argv[1], argv[2], &hints, &found);
    if (status != 0) {
        fprintf(stderr, "fetch: %s: %s\n", argv[1], gai_strerror(status));
        return 1;
    }
    fd = socket(found->ai_family, found->ai_socktype, 0);
    if (fd < 0 || connect(fd, found->ai_addr, found->ai_addrlen) != 0) {
        perror("fetch: connect");
        return 1;
    }
    const char *request = "GET / HTTP/1.0\r\n\r\n";
    if (write(fd, request, strlen(request)) < 0) {
        perror("fetch: write");
        return 1;
    }
    while ((got = read(fd, buffer, sizeof buffer)) > 0)
        fwrite(buffer, 1, (size_t)got, stdout);
    return 0;
}
