package runner

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxPasswd bounds the image's /etc/passwd and /etc/group that are read.
const maxPasswd = 4 << 20

// lookupUser turns an image config's user ("", "uid", "uid:gid", "name",
// "name:group") into credentials, resolving names in the image's
// /etc/passwd and /etc/group. A user without a group gets its passwd group.
func lookupUser(root, user string) (*syscall.Credential, error) {
	if user == "" || user == "root" {
		return &syscall.Credential{Uid: 0, Gid: 0}, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	cred := &syscall.Credential{}
	if id, err := strconv.ParseUint(u, 10, 32); err == nil {
		cred.Uid = uint32(id)
		if e, ok := findID(root, "etc/passwd", 2, u); ok && !hasGroup && len(e) > 3 {
			if gid, err := strconv.ParseUint(e[3], 10, 32); err == nil {
				cred.Gid = uint32(gid)
			}
		}
	} else {
		e, ok := find(root, "etc/passwd", u)
		if !ok || len(e) < 4 {
			return nil, fmt.Errorf("%w: user %q is not in the image's /etc/passwd", ErrSetup, u)
		}
		uid, err1 := strconv.ParseUint(e[2], 10, 32)
		gid, err2 := strconv.ParseUint(e[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%w: user %q: bad /etc/passwd entry", ErrSetup, u)
		}
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
	}
	if hasGroup {
		if id, err := strconv.ParseUint(g, 10, 32); err == nil {
			cred.Gid = uint32(id)
		} else {
			e, ok := find(root, "etc/group", g)
			if !ok || len(e) < 3 {
				return nil, fmt.Errorf("%w: group %q is not in the image's /etc/group", ErrSetup, g)
			}
			gid, err := strconv.ParseUint(e[2], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%w: group %q: bad /etc/group entry", ErrSetup, g)
			}
			cred.Gid = uint32(gid)
		}
	}
	return cred, nil
}

// find returns the fields of the line of the image's file whose first field is name.
func find(root, file, name string) ([]string, bool) { return findField(root, file, 0, name) }

// findID returns the fields of the line whose field k is id.
func findID(root, file string, k int, id string) ([]string, bool) {
	return findField(root, file, k, id)
}

func findField(root, file string, k int, v string) ([]string, bool) {
	p := filepath.Join(root, file)
	// Not through a symlink: it would resolve against the host's root.
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		return nil, false
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxPasswd))
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) > k && fields[k] == v {
			return fields, true
		}
	}
	return nil, false
}
