// Command recovery measures how long a tbgateway Gateway takes, after its
// connection is cut, to get the data of every device flowing again.
//
// For each pair of -devices and -rtt it starts an embedded fake ThingsBoard
// (tbtest), puts a latency proxy (internal/netproxy) in front of it, dials a
// gateway through the proxy and connects every device. Then, -cuts times,
// it cuts the connection and keeps the server unreachable while it queues
// one telemetry entry for every device (the reading each device took
// during the outage), lets the gateway reconnect, and measures from the
// moment the proxy accepted the new connection:
//
//   - time to first data: until the server received the first of those
//     entries, of any device;
//   - time to all: until it had received the entry of every device.
//
// It prints one line per pair (one JSON object with -json) with both
// figures, the same in round trips, the target (devices/window + 3) × RTT
// (announce every device again a window at a time, plus CONNECT,
// SUBSCRIBE and the data's own round trip) and the points lost: entries
// the server acknowledged but did not store. It exits with status 1 when
// a run failed or lost data.
//
//	go run ./examples/recovery -devices 1000 -rtt 20ms
//	go run ./examples/recovery -devices 1000,20000,100000 -rtt 20ms,100ms -window 100 -cuts 3 -json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"
)

type config struct {
	Devices  []int
	RTTs     []time.Duration
	Window   int // WithMaxInflight, and what the server reports as its limit
	Cuts     int
	JSON     bool
	Timeout  time.Duration // per (devices, rtt) run
	Parallel int           // concurrent Connect calls during setup; 0: 2 × window
}

func defaultConfig() config {
	return config{
		Devices: []int{1000, 20000, 100000},
		RTTs:    []time.Duration{20 * time.Millisecond, 100 * time.Millisecond},
		Window:  100,
		Cuts:    1,
		Timeout: 5 * time.Minute,
	}
}

func parseFlags(args []string, errOut io.Writer) (config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("recovery", flag.ContinueOnError)
	fs.SetOutput(errOut)
	devices := fs.String("devices", joinInts(c.Devices), "device counts, comma-separated")
	rtts := fs.String("rtt", joinDurations(c.RTTs), "round-trip times the proxy adds, comma-separated")
	fs.IntVar(&c.Window, "window", c.Window, "in-flight window (WithMaxInflight; the server reports the same limit)")
	fs.IntVar(&c.Cuts, "cuts", c.Cuts, "connection cuts per run")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON object per run instead of a line of text")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "time limit of each (devices, rtt) run")
	fs.IntVar(&c.Parallel, "parallel", 0, "concurrent Connect calls during setup (default 2 × window)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if c.Devices, err = parseList(*devices, strconv.Atoi); err != nil {
		return c, fmt.Errorf("-devices: %w", err)
	}
	if c.RTTs, err = parseList(*rtts, time.ParseDuration); err != nil {
		return c, fmt.Errorf("-rtt: %w", err)
	}
	return c, c.validate()
}

func (c *config) validate() error {
	switch {
	case len(c.Devices) == 0 || len(c.RTTs) == 0:
		return errors.New("need at least one device count and one rtt")
	case slices.ContainsFunc(c.Devices, func(n int) bool { return n < 1 }):
		return errors.New("device counts must be positive")
	case slices.ContainsFunc(c.RTTs, func(d time.Duration) bool { return d < 0 }):
		return errors.New("rtts must not be negative")
	case c.Window < 1 || c.Window > 65535:
		return fmt.Errorf("window %d out of 1..65535", c.Window)
	case c.Cuts < 1:
		return errors.New("cuts must be positive")
	case c.Timeout <= 0:
		return errors.New("timeout must be positive")
	case c.Parallel < 0:
		return errors.New("parallel must not be negative")
	}
	return nil
}

func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func joinDurations(v []time.Duration) string {
	s := make([]string, len(v))
	for i, d := range v {
		s[i] = d.String()
	}
	return strings.Join(s, ",")
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "recovery:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "recovery:", err)
		os.Exit(1)
	}
}

// errFailed is returned by run when a run failed or lost data; the
// figures of the other runs are printed all the same.
var errFailed = errors.New("some runs failed or lost data")

// run measures every (devices, rtt) pair in turn, each bounded by
// cfg.Timeout, printing one report per pair to out as soon as it is done.
// A failed run is reported and the next one goes on.
func run(ctx context.Context, cfg config, out io.Writer) error {
	bad := 0
	for _, n := range cfg.Devices {
		for _, rtt := range cfg.RTTs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r := measure(ctx, cfg, n, rtt)
			if r.Err != "" || r.Lost > 0 || r.Failed > 0 || r.Delivered < r.Devices {
				bad++
			}
			if cfg.JSON {
				line, err := json.Marshal(r)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", line)
			} else {
				fmt.Fprintln(out, r.text())
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("%w: %d of %d", errFailed, bad, len(cfg.Devices)*len(cfg.RTTs))
	}
	return nil
}
