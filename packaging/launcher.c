/*
 * deviceid-inject's one-file launcher.
 *
 * The shipped /opt/cni/bin/deviceid-inject is this small program with a Nuitka standalone
 * folder appended (see pack.py for the layout). On each run it makes sure the folder is
 * unpacked, complete, under <cache root>/<build id>/, then execs the real program there,
 * so only one process stays resident and start-up is that of the standalone folder.
 *
 * Why not Nuitka's own onefile mode: its cached mode rewrites the cache files in place
 * without a lock, and concurrent first runs (several pods at once) die with SIGBUS.
 * Here a folder is unpacked into a private temporary name and renamed into place: rename
 * is atomic, so a reader finds a whole folder or none, and the loser of a race drops its
 * copy and uses the winner's. A damaged folder (a file missing or of the wrong size) is
 * moved aside and unpacked again. Every run marks its folder used and removes the folders of
 * other builds that no run has used for ten minutes, so upgrades do not pile up 55 MB each and
 * no program loses files it still loads; a run that loses its folder anyway between its check
 * and its exec unpacks again and retries once.
 *
 * The cache root (default /var/cache/deviceid-inject, or $DEVICEID_INJECT_CACHE) must be a
 * real directory owned by us or by root and writable by nobody else, or we refuse to exec from it:
 * on a node this runs as root. Failures print one CNI error object on stdout (code 5) and exit 1.
 *
 * Before any of that, a CNI call (ADD, DEL, CHECK, GC, STATUS) is offered to the node's CNI server
 * (`deviceid-inject cni-server`, at /run/deviceid-inject/cni.sock or $DEVICEID_INJECT_SOCKET): the
 * CNI_* environment and stdin, with our own network namespace, our root folder and the Pod's
 * network namespace as descriptors (src/deviceid_inject/wire.py has the format). Its answer is relayed as is. When no server listens,
 * it refuses (another build, a path it cannot see), or the connection ends before a whole answer,
 * the call runs here exactly as without a server, with the same stdin.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "DIDINJ\0\1"
#define TRAILER_SIZE 80
#define ENTRY "deviceid-inject"
#define DEFAULT_CACHE "/var/cache/deviceid-inject"
/* Longer than any run of the plugin (the kubelet gives a CNI call 4 minutes at most). */
#define UNUSED_SECONDS (10 * 60)
/* How long a CNI call waits for the one before it: the plugin's own state lock gives up after 10 s. */
#define LOCK_WAIT_MS 10000
#define DEFAULT_SOCKET "/run/deviceid-inject/cni.sock"
#define WIRE_MAGIC "DIDINJ-CNI/1\n"
/* The plugin refuses a larger stdin (protocol.MAX_STDIN_BYTES) from its first MAX_STDIN + 1 bytes:
 * that much is all the server needs to give the same answer. */
#define MAX_STDIN (4 * 1024 * 1024)
#define MAX_ANSWER (128 * 1024 * 1024)
/* The server kills a call 30 s after accepting it (cni-server --call-seconds): wait a little longer,
 * so that nothing of a call we then run ourselves can still be running there. */
#define SERVER_WAIT_MS 40000
/* A full accept queue: try again for a while, then run the call here. */
#define CONNECT_WAIT_MS 1000

struct trailer {
    char magic[8];
    uint64_t offset; /* where the records start */
    uint64_t length; /* bytes of records */
    char build_id[56]; /* NUL-terminated, [0-9a-f] only */
};

struct record {
    char type; /* 'f' file, 'l' symlink */
    uint32_t mode;
    char path[4096];
    uint64_t size;
    uint64_t data; /* offset of the data in the executable */
};

static void fail(const char *what, const char *detail, int err)
{
    /* stdout is the CNI protocol channel: one error object, nothing else. */
    char msg[8192];
    snprintf(msg, sizeof msg, "deviceid-inject launcher: %s %s: %s", what, detail, err ? strerror(err) : "invalid");
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 5, \"msg\": \"");
    for (const char *c = msg; *c; c++) {
        if (*c == '"' || *c == '\\')
            putchar('\\');
        if ((unsigned char)*c >= 0x20)
            putchar(*c);
    }
    printf("\", \"details\": \"\"}\n");
    fprintf(stderr, "%s\n", msg);
    exit(1);
}

static int read_at(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

/* Whether a relative path has a ".." component, which would climb out of the folder ("a..b" is a name). */
static int has_dotdot_component(const char *path)
{
    for (const char *part = path; part != NULL; part = strchr(part, '/') ? strchr(part, '/') + 1 : NULL)
        if (strncmp(part, "..", 2) == 0 && (part[2] == '/' || part[2] == '\0'))
            return 1;
    return 0;
}

/* Read the record at *pos, advance *pos past its data. Returns 0, or -1 on a bad payload. */
static int next_record(int fd, const struct trailer *t, uint64_t *pos, struct record *r)
{
    unsigned char head[17];
    uint32_t path_len;
    if (*pos + sizeof head > t->offset + t->length || read_at(fd, head, sizeof head, *pos) < 0)
        return -1;
    r->type = (char)head[0];
    memcpy(&r->mode, head + 1, 4);
    memcpy(&path_len, head + 5, 4);
    memcpy(&r->size, head + 9, 8);
    if (path_len == 0 || path_len >= sizeof r->path || (r->type != 'f' && r->type != 'l'))
        return -1;
    if (read_at(fd, r->path, path_len, *pos + sizeof head) < 0)
        return -1;
    r->path[path_len] = '\0';
    if (r->path[0] == '/' || has_dotdot_component(r->path))
        return -1;
    r->data = *pos + sizeof head + path_len;
    *pos = r->data + r->size;
    return *pos <= t->offset + t->length ? 0 : -1;
}

/* Whether dir holds every file of the payload with the right size. */
static int complete(int fd, const struct trailer *t, const char *dir)
{
    uint64_t pos = t->offset;
    struct record r;
    char path[8192];
    struct stat st;
    while (pos < t->offset + t->length) {
        if (next_record(fd, t, &pos, &r) < 0)
            return 0;
        snprintf(path, sizeof path, "%s/%s", dir, r.path);
        if (lstat(path, &st) < 0)
            return 0;
        if (r.type == 'f' && (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != r.size))
            return 0;
        if (r.type == 'l' && !S_ISLNK(st.st_mode))
            return 0;
    }
    return 1;
}

static void make_parents(const char *dir, const char *rel)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    for (char *slash = path + strlen(dir) + 1; (slash = strchr(slash, '/')) != NULL; slash++) {
        *slash = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            fail("cannot create", path, errno);
        *slash = '/';
    }
}

static void copy_out(int fd, const struct record *r, const char *dest)
{
    char buf[1 << 16];
    uint64_t left = r->size, off = r->data;
    int out = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, r->mode & 0755);
    if (out < 0)
        fail("cannot create", dest, errno);
    while (left > 0) {
        size_t chunk = left < sizeof buf ? (size_t)left : sizeof buf;
        if (read_at(fd, buf, chunk, off) < 0)
            fail("cannot read the payload for", dest, EIO);
        for (size_t done = 0; done < chunk;) {
            ssize_t n = write(out, buf + done, chunk - done);
            if (n < 0)
                fail("cannot write", dest, errno);
            done += (size_t)n;
        }
        left -= chunk;
        off += chunk;
    }
    if (close(out) < 0)
        fail("cannot write", dest, errno);
}

static void unpack(int fd, const struct trailer *t, const char *dir)
{
    uint64_t pos = t->offset;
    struct record r;
    char path[8192], target[4096];
    while (pos < t->offset + t->length) {
        if (next_record(fd, t, &pos, &r) < 0)
            fail("damaged payload in", "/proc/self/exe", 0);
        make_parents(dir, r.path);
        snprintf(path, sizeof path, "%s/%s", dir, r.path);
        if (r.type == 'f') {
            copy_out(fd, &r, path);
        } else {
            if (r.size >= sizeof target || read_at(fd, target, r.size, r.data) < 0)
                fail("damaged payload in", "/proc/self/exe", 0);
            target[r.size] = '\0';
            if (symlink(target, path) < 0)
                fail("cannot create", path, errno);
        }
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The cache root must be a real directory, ours or root's, writable by nobody else. Root's is safe
 * for any caller (only root could change it) and is what an image holds: a workload running as
 * another user then runs the build unpacked there, and fails cleanly if it is not complete. */
static void check_root(const char *root)
{
    struct stat st;
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        fail("cannot create the cache folder", root, errno);
    if (lstat(root, &st) < 0)
        fail("cannot inspect the cache folder", root, errno);
    if (!S_ISDIR(st.st_mode) || (st.st_uid != geteuid() && st.st_uid != 0) || (st.st_mode & 022))
        fail("refusing the cache folder (not a directory of ours or root's, or writable by others)", root, 0);
}

/* A folder name that a build id can have: 1 to 55 lower-case hex digits. */
static int is_build_id(const char *name)
{
    size_t len = strlen(name);
    return len > 0 && len < sizeof(((struct trailer *)0)->build_id) && strspn(name, "0123456789abcdef") == len;
}

/* Remove the unpacked folders of other builds that no run has used for UNUSED_SECONDS. A folder in
 * use must stay: its program loads files from it after it starts (an upgrade that removed the old
 * build at once made old-build runs still in flight abort). Every run marks its own folder used. */
static void remove_unused_builds(const char *root, const char *ours)
{
    char path[4096], aside[4096];
    struct stat st;
    time_t now = time(NULL);
    DIR *folder = opendir(root);
    struct dirent *entry;
    if (folder == NULL)
        return;
    while ((entry = readdir(folder)) != NULL) {
        if (!is_build_id(entry->d_name) || strcmp(entry->d_name, ours) == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", root, entry->d_name);
        if (lstat(path, &st) < 0 || now - st.st_mtime < UNUSED_SECONDS)
            continue;
        snprintf(aside, sizeof aside, "%s/.old-%s-%d", root, entry->d_name, (int)getpid());
        if (rename(path, aside) == 0)
            remove_tree(aside);
    }
    closedir(folder);
}

/* A CNI call of the plugin holds a Python runtime of about 15 MiB, charged to the memory cgroup of
 * whoever runs it: under Multus's thick mode that is the daemon's container, whose own manifest
 * limits it to 50Mi. Pods starting together would get it OOM-killed mid-ADD. So CNI calls run one
 * at a time per node: a waiting call holds only this launcher (about 1 MiB), and the plugin serialises
 * its work on its state lock anyway. The lock (fd kept across exec) is released when the program
 * exits. VERSION, and every run without CNI_COMMAND (the bridge, the command line), do not queue. A
 * call that cannot get it within LOCK_WAIT_MS runs anyway: waiting must never become failing. */
static void one_cni_call_at_a_time(const char *root)
{
    const char *command = getenv("CNI_COMMAND");
    char path[4096];
    struct timespec pause = {0, 5 * 1000 * 1000};
    if (command == NULL || strcmp(command, "VERSION") == 0)
        return;
    snprintf(path, sizeof path, "%s/.cni-call.lock", root);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
    if (fd < 0)
        return; /* a read-only cache: nothing to queue on */
    for (int waited = 0; flock(fd, LOCK_EX | LOCK_NB) < 0; waited += 5) {
        if (errno != EWOULDBLOCK || waited >= LOCK_WAIT_MS) {
            close(fd);
            return;
        }
        nanosleep(&pause, NULL);
    }
}

/* ---- the node's CNI server, asked first ------------------------------------------------------ */

struct buffer {
    char *data;
    size_t len, cap;
};

static int buf_add(struct buffer *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int buf_field(struct buffer *b, const void *data, size_t len)
{
    unsigned char size[4] = {len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff};
    return buf_add(b, size, 4) < 0 || buf_add(b, data, len) < 0 ? -1 : 0;
}

static uint32_t get_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static int ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : (int)ms;
}

static int wait_for(int fd, short events, const struct timespec *deadline)
{
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int left = ms_left(deadline);
        if (left == 0)
            return -1;
        int n = poll(&p, 1, left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* stdin, whole, or its first MAX_STDIN + 1 bytes or more when it is larger (the rest stays unread). */
static struct buffer read_stdin(void)
{
    struct buffer in = {NULL, 0, 0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (n > 0 && buf_add(&in, chunk, (size_t)n) < 0))
            fail("cannot read", "stdin", n < 0 ? errno : ENOMEM);
        if (n == 0)
            return in;
        if (in.len > MAX_STDIN)
            return in;
    }
}

/* Hand what we read of stdin, and whatever is still unread, to the program we exec as its fd 0. */
static void give_back_stdin(const struct buffer *in)
{
    int fd = memfd_create("stdin", MFD_CLOEXEC);
    char chunk[65536];
    ssize_t n;
    if (fd < 0 || write_all(fd, in->data ? in->data : "", in->len) < 0)
        fail("cannot keep", "stdin", errno);
    while ((n = read(0, chunk, sizeof chunk)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0 && write_all(fd, chunk, (size_t)n) < 0)
            fail("cannot keep", "stdin", errno);
    if (lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0)
        fail("cannot keep", "stdin", errno);
    close(fd);
}

static int connect_server(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct timespec pause = {0, 5 * 1000 * 1000}, deadline;
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += CONNECT_WAIT_MS / 1000;
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if ((errno != EAGAIN && errno != EINTR) || ms_left(&deadline) == 0) {
            close(fd);
            return -1;
        }
        nanosleep(&pause, NULL);
    }
    return fd;
}

/* The request (wire.py): magic, build id, the CNI_* environment, stdin. */
static int build_request(struct buffer *req, const char *build_id, const struct buffer *in)
{
    extern char **environ;
    uint32_t count = 0;
    unsigned char n[4];
    for (char **e = environ; *e; e++)
        count += strncmp(*e, "CNI_", 4) == 0;
    n[0] = count & 0xff, n[1] = (count >> 8) & 0xff, n[2] = (count >> 16) & 0xff, n[3] = count >> 24;
    if (buf_add(req, WIRE_MAGIC, strlen(WIRE_MAGIC)) < 0 || buf_field(req, build_id, strlen(build_id)) < 0 ||
        buf_add(req, n, 4) < 0)
        return -1;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0 && buf_field(req, *e, strlen(*e)) < 0)
            return -1;
    return buf_field(req, in->data ? in->data : "", in->len > MAX_STDIN ? MAX_STDIN + 1 : in->len);
}

static int send_request(int sock, const struct buffer *req, const int *fds, int nfds, const struct timespec *deadline)
{
    union {
        char space[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {req->data, req->len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    memset(&control, 0, sizeof control);
    msg.msg_control = control.space;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
    size_t sent = 0;
    while (sent < req->len) {
        ssize_t n = sent == 0 ? sendmsg(sock, &msg, MSG_NOSIGNAL)
                              : send(sock, req->data + sent, req->len - sent, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_for(sock, POLLOUT, deadline) < 0)
                return -1;
            continue;
        }
        if (n <= 0)
            return -1;
        sent += (size_t)n;
    }
    return 0;
}

enum { REPLY_PARTIAL, REPLY_BAD, REPLY_ANSWER, REPLY_REFUSAL };

/* How far `len` bytes of reply go: magic, then "R" + reason, or "A" + exit code + stdout + stderr. */
static int reply_state(const char *p, size_t len)
{
    size_t head = sizeof WIRE_MAGIC - 1;
    if (len < head)
        return memcmp(p, WIRE_MAGIC, len) == 0 ? REPLY_PARTIAL : REPLY_BAD;
    if (memcmp(p, WIRE_MAGIC, head) != 0)
        return REPLY_BAD;
    p += head;
    len -= head;
    if (len == 0)
        return REPLY_PARTIAL;
    if (p[0] == 'R')
        return len >= 5 && len >= 5 + (uint64_t)get_u32(p + 1) ? REPLY_REFUSAL : REPLY_PARTIAL;
    if (p[0] != 'A')
        return REPLY_BAD;
    if (len < 13)
        return REPLY_PARTIAL;
    uint64_t out = get_u32(p + 5);
    if (len < 13 + out)
        return REPLY_PARTIAL;
    return len >= 13 + out + get_u32(p + 9 + out) ? REPLY_ANSWER : REPLY_PARTIAL;
}

static int read_reply(int sock, struct buffer *reply, const struct timespec *deadline)
{
    char chunk[65536];
    for (;;) {
        int state = reply_state(reply->data ? reply->data : "", reply->len);
        if (state != REPLY_PARTIAL)
            return state;
        if (reply->len > MAX_ANSWER || wait_for(sock, POLLIN, deadline) < 0)
            return REPLY_BAD;
        ssize_t n = read(sock, chunk, sizeof chunk);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0 || buf_add(reply, chunk, (size_t)n) < 0)
            return REPLY_BAD; /* the server went away before a whole answer */
    }
}

/* One exchange with the server: the plugin's exit code once its answer is relayed, or -1. */
static int exchange(const char *path, const char *build_id, const char *command, const struct buffer *in)
{
    struct buffer request = {NULL, 0, 0}, reply = {NULL, 0, 0};
    struct timespec deadline;
    int fds[3], nfds = 0, sock = -1, code = -1;
    const char *netns = getenv("CNI_NETNS");
    /* Our own netns: where the server's child looks up PFs and their VF tables, as we would. */
    if ((fds[0] = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    nfds = 1;
    /* Our root: the server serves a call only if every path it names is the same file there. */
    if ((fds[1] = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        goto out;
    nfds = 2;
    if (netns != NULL && netns[0] != '\0') {
        /* The Pod's, opened here: the server needs no view of our mounts to find it. */
        if ((fds[2] = open(netns, O_RDONLY | O_CLOEXEC)) >= 0)
            nfds = 3;
        else if (strcmp(command, "ADD") == 0 || strcmp(command, "CHECK") == 0)
            goto out; /* the plugin, run here, says why in its own words */
    }
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += SERVER_WAIT_MS / 1000;
    if ((sock = connect_server(path)) < 0 || build_request(&request, build_id, in) < 0 ||
        send_request(sock, &request, fds, nfds, &deadline) < 0)
        goto out;
    int state = read_reply(sock, &reply, &deadline);
    const char *body = state == REPLY_BAD ? NULL : reply.data + sizeof WIRE_MAGIC; /* past magic and kind */
    if (state == REPLY_REFUSAL) {
        fprintf(stderr, "deviceid-inject: the CNI server at %s handed the call back (%.*s); running it here\n", path,
                (int)get_u32(body), body + 4);
    } else if (state == REPLY_ANSWER) {
        uint32_t out = get_u32(body + 4), err = get_u32(body + 8 + out);
        write_all(1, body + 8, out);
        write_all(2, body + 12 + out, err);
        code = (int)get_u32(body);
    }
out:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (sock >= 0)
        close(sock);
    free(request.data);
    free(reply.data);
    return code;
}

static int served_command(const char *command)
{
    static const char *const served[] = {"ADD", "DEL", "CHECK", "GC", "STATUS"};
    for (size_t i = 0; i < sizeof served / sizeof served[0]; i++)
        if (strcmp(command, served[i]) == 0)
            return 1;
    return 0;
}

/* Offer the call to the node's CNI server: its exit code when it answered, -1 to run it here. */
static int ask_server(const char *build_id)
{
    const char *command = getenv("CNI_COMMAND"), *path = getenv("DEVICEID_INJECT_SOCKET");
    struct stat st;
    if (command == NULL || !served_command(command))
        return -1; /* VERSION, the bridge, the command line: never the server's */
    if (path == NULL || path[0] == '\0')
        path = DEFAULT_SOCKET;
    if (stat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return -1; /* no server on this node: stdin stays untouched */
    struct buffer in = read_stdin();
    int code = exchange(path, build_id, command, &in);
    if (code < 0)
        give_back_stdin(&in);
    free(in.data);
    return code;
}

/* Unpack into a private temporary folder, then rename it into place. */
static void install(int fd, const struct trailer *t, const char *root, const char *dir)
{
    char tmp[4096], aside[4096];
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s-XXXXXX", root, t->build_id);
    if (mkdtemp(tmp) == NULL)
        fail("cannot create a folder in", root, errno);
    chmod(tmp, 0755);
    unpack(fd, t, tmp);
    if (access(dir, F_OK) == 0 && !complete(fd, t, dir)) {
        /* Damaged: move it aside (running programs keep their open files), then replace it. */
        snprintf(aside, sizeof aside, "%s/.old-%s-%d", root, t->build_id, (int)getpid());
        if (rename(dir, aside) == 0)
            remove_tree(aside);
    }
    if (rename(tmp, dir) < 0) {
        int err = errno;
        remove_tree(tmp);
        /* Another run won the race: its folder is whole, ours is not needed. */
        if ((err != EEXIST && err != ENOTEMPTY) || !complete(fd, t, dir))
            fail("cannot move the unpacked folder into", dir, err);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    struct trailer t;
    struct stat st;
    char dir[4096], exe[8192];
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < TRAILER_SIZE)
        fail("cannot read", "/proc/self/exe", errno);
    if (read_at(fd, &t, sizeof t, (uint64_t)st.st_size - TRAILER_SIZE) < 0 || memcmp(t.magic, MAGIC, 8) != 0)
        fail("no payload in", "/proc/self/exe", 0);
    t.build_id[sizeof t.build_id - 1] = '\0';
    if (t.build_id[0] == '\0' || strspn(t.build_id, "0123456789abcdef") != strlen(t.build_id))
        fail("bad build id in", "/proc/self/exe", 0);
    int code = ask_server(t.build_id);
    if (code >= 0)
        return code;

    const char *root = getenv("DEVICEID_INJECT_CACHE");
    if (root == NULL || root[0] != '/' || strlen(root) > 2048)
        root = DEFAULT_CACHE;
    check_root(root);
    snprintf(dir, sizeof dir, "%s/%s", root, t.build_id);
    snprintf(exe, sizeof exe, "%s/%s", dir, ENTRY);
    if (!complete(fd, &t, dir))
        install(fd, &t, root, dir);
    /* Mark our folder used (its mtime), so no other build's run removes it while we run. On a
     * read-only cache (an image's) this fails, and nothing there is ever removed either. */
    utimensat(AT_FDCWD, dir, NULL, 0);
    remove_unused_builds(root, t.build_id);
    one_cni_call_at_a_time(root);
    /* The program's build and folder: a CNI server started from it names the build it serves and
     * keeps its folder marked used (src/deviceid_inject/cniserver.py). */
    setenv("DEVICEID_INJECT_BUILD_ID", t.build_id, 1);
    setenv("DEVICEID_INJECT_BUILD_DIR", dir, 1);
    execv(exe, argv);
    if (errno == ENOENT) {
        /* Another build's first run removed our folder after we checked it: once more. */
        install(fd, &t, root, dir);
        execv(exe, argv);
    }
    fail("cannot run", exe, errno);
    return 1;
}
