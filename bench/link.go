package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Profile is a named link setting: a rate the registry's egress is shaped to,
// or no shaping.
type Profile struct {
	Name string `json:"name"`
	// RateBitsPerSecond is the tbf rate; 0 means unshaped.
	RateBitsPerSecond int64 `json:"rateBitsPerSecond"`
}

// Profiles are the named link settings; any rate such as "300mbit" parses too.
var Profiles = []string{"200mbit", "1gbit", "50mbit", "off"}

// ParseProfile parses "off" or a rate with a kbit, mbit or gbit suffix.
func ParseProfile(s string) (Profile, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "off" || t == "none" {
		return Profile{Name: "off"}, nil
	}
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f*u.mult < 8e3 || f*u.mult > 100e9 {
				break
			}
			return Profile{Name: t, RateBitsPerSecond: int64(f * u.mult)}, nil
		}
	}
	return Profile{}, fmt.Errorf("link profile %q: want off or a rate such as 200mbit, 1gbit, 50mbit", s)
}

// Link is a veth pair between this (the node's) network namespace and a
// namespace of its own where the registry runs. The peer end's egress, i.e.
// everything the registry sends, can be shaped with tbf. Names carry the
// process id and a counter, so parallel runs do not collide.
type Link struct {
	Namespace string     // network namespace of the registry side
	HostIf    string     // veth end in this namespace
	PeerIf    string     // veth end in Namespace
	HostIP    netip.Addr // address of HostIf (a link-local /30)
	PeerIP    netip.Addr // address of PeerIf: where the registry listens
	rate      int64
}

var linkSeq atomic.Int32

// NewLink creates the namespace and the veth pair and brings both ends up,
// unshaped. It needs root. Close removes both.
func NewLink(ctx context.Context) (l *Link, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("shaped link: needs root (network namespaces, veth, tc)")
	}
	pid, k := os.Getpid(), linkSeq.Add(1)
	l = &Link{
		Namespace: fmt.Sprintf("lazyfs-bench-%d-%d", pid, k),
		HostIf:    fmt.Sprintf("lzb%d%dh", pid, k),
		PeerIf:    fmt.Sprintf("lzb%d%dn", pid, k),
	}
	if len(l.HostIf) > 15 {
		l.HostIf, l.PeerIf = fmt.Sprintf("lzb%x%dh", pid, k), fmt.Sprintf("lzb%x%dn", pid, k)
	}
	if l.HostIP, l.PeerIP, err = freeSubnet(pid + int(k)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	steps := [][]string{
		{"ip", "netns", "add", l.Namespace},
		{"ip", "link", "add", l.HostIf, "type", "veth", "peer", "name", l.PeerIf},
		{"ip", "link", "set", l.PeerIf, "netns", l.Namespace},
		{"ip", "addr", "add", l.HostIP.String() + "/30", "dev", l.HostIf},
		{"ip", "link", "set", l.HostIf, "up"},
		{"ip", "netns", "exec", l.Namespace, "ip", "addr", "add", l.PeerIP.String() + "/30", "dev", l.PeerIf},
		{"ip", "netns", "exec", l.Namespace, "ip", "link", "set", l.PeerIf, "up"},
		{"ip", "netns", "exec", l.Namespace, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return l, fmt.Errorf("link %s: %w", l.Namespace, err)
		}
	}
	return l, nil
}

// freeSubnet picks a link-local /30 that no interface of this namespace uses.
func freeSubnet(seed int) (host, peer netip.Addr, err error) {
	used := map[[2]byte]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return host, peer, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip4 := n.IP.To4(); ip4 != nil && ip4[0] == 169 && ip4[1] == 254 {
				used[[2]byte{ip4[2], ip4[3] &^ 3}] = true
			}
		}
	}
	for i := range 100 * 64 {
		v := (seed*7919 + i) % (100 * 64)
		third, fourth := byte(100+v/64), byte(v%64*4)
		if used[[2]byte{third, fourth}] {
			continue
		}
		return netip.AddrFrom4([4]byte{169, 254, third, fourth + 1}), netip.AddrFrom4([4]byte{169, 254, third, fourth + 2}), nil
	}
	return host, peer, errors.New("no free link-local /30 in 169.254.100.0-169.254.199.255")
}

// Burst returns the tbf bucket size used for a rate: 256 KiB (DESIGN.md's
// verified recipe) or 10 ms worth of the rate, whichever is larger, so fast
// rates are not held back by timer granularity.
func Burst(rateBits int64) int64 { return max(256<<10, rateBits/8/100) }

// Shape limits the registry side's egress to rateBits per second with tbf
// (0 removes the limit).
func (l *Link) Shape(ctx context.Context, rateBits int64) error {
	if rateBits <= 0 {
		if l.rate > 0 {
			if err := run(ctx, "ip", "netns", "exec", l.Namespace, "tc", "qdisc", "del", "dev", l.PeerIf, "root"); err != nil {
				return fmt.Errorf("link %s: unshape: %w", l.Namespace, err)
			}
		}
		l.rate = 0
		return nil
	}
	err := run(ctx, "ip", "netns", "exec", l.Namespace, "tc", "qdisc", "replace", "dev", l.PeerIf, "root", "tbf",
		"rate", strconv.FormatInt(rateBits, 10)+"bit", "burst", strconv.FormatInt(Burst(rateBits), 10), "latency", "100ms")
	if err != nil {
		return fmt.Errorf("link %s: shape to %d bit/s: %w", l.Namespace, rateBits, err)
	}
	l.rate = rateBits
	return nil
}

// Counters are cumulative byte and packet counts of the node's end of the link.
type Counters struct {
	RxBytes, TxBytes, RxPackets, TxPackets int64
}

// Sub returns c - o.
func (c Counters) Sub(o Counters) Counters {
	return Counters{c.RxBytes - o.RxBytes, c.TxBytes - o.TxBytes, c.RxPackets - o.RxPackets, c.TxPackets - o.TxPackets}
}

// Counters reads the node end's statistics: Rx is what the registry sent.
func (l *Link) Counters() (Counters, error) {
	return readIfCounters(filepath.Join("/sys/class/net", l.HostIf, "statistics"))
}

func readIfCounters(dir string) (Counters, error) {
	var c Counters
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"rx_bytes", &c.RxBytes}, {"tx_bytes", &c.TxBytes}, {"rx_packets", &c.RxPackets}, {"tx_packets", &c.TxPackets}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return c, fmt.Errorf("interface counters: %w", err)
		}
		if *f.dst, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return c, fmt.Errorf("interface counter %s/%s: %w", dir, f.name, err)
		}
	}
	return c, nil
}

// Command returns a command that runs inside the registry's namespace.
func (l *Link) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Namespace, name}, args...)...)
}

// Listen opens a TCP listener inside the registry's namespace (addr as for
// net.Listen, e.g. PeerIP:0). Connections it accepts live in that namespace;
// this process may serve them from any thread.
func (l *Link) Listen(addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread switches namespace and is never unlocked, so the
		// runtime ends it with this goroutine instead of reusing it.
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/run/netns", l.Namespace), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("open netns %s: %w", l.Namespace, err)}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", l.Namespace, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// Close removes the namespace, which takes the veth pair with it.
func (l *Link) Close() error {
	if l == nil || l.Namespace == "" {
		return nil
	}
	_ = exec.Command("ip", "link", "del", l.HostIf).Run()
	if _, err := os.Stat(filepath.Join("/run/netns", l.Namespace)); err == nil {
		if out, err := exec.Command("ip", "netns", "del", l.Namespace).CombinedOutput(); err != nil {
			return fmt.Errorf("remove netns %s: %v: %s", l.Namespace, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// run runs a command and returns its output in the error when it fails.
func run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
