// Command bench is a load program for tbgateway. It streams telemetry of
// -devices devices (-entries entries each, -keys keys per entry) through the
// SDK to a broker, and in the same run sends the same data points through raw
// paho two ways:
//
//   - naive: one pre-encoded message per device entry, the shape every other
//     SDK sends;
//   - packed: payloads pre-packed to the size the SDK packs to (MQTT remaining
//     length up to 65536), the transport's ceiling for those bytes with no
//     encoding cost.
//
// A subscriber checks that every data point arrived exactly once. The program
// prints points/s, messages/s, bytes/s, publish-to-PUBACK latency, peak heap
// and the ratios between the runs, then measures the heap the SDK needs to
// track -heap-devices connected devices. Its last output line is one JSON
// object with the figures. It exits with status 1 when a data point was lost.
//
// Everything shares the machine, so the program keeps its own work out of
// the runs it times: the raw runs' payloads and the payloads the subscriber
// receives live outside the Go heap (test data on the heap would change how
// often the GC runs), the subscriber checks them after the timed part, and
// latency is read for one call in eight once there are 100 000 or more.
// -ballast N holds N MiB of idle heap through every run instead, the way an
// application's live data would, so that the GC runs less often.
//
//	go run ./examples/bench                          # embedded mochi broker
//	go run ./examples/bench -broker tcp://127.0.0.1:1883 -entries 4000
//	go run ./examples/bench -tbtest                  # embedded tbtest (fake ThingsBoard), storage checked
//
// SDK runs give their values as Points, which an application refills in
// place; -values gives them as a Values map instead.
//
// Runs (-runs): sdk (coalescing, one call per device entry), sdk-unbatched
// (WithoutCoalescing, one message per call), sdk-batched (coalescing, -batch
// entries per call; not run by default), naive and packed (raw paho with a
// window of -inflight unacknowledged messages, like the SDK's), sdk-durable
// and sdk-durable-sync (sdk with a durable queue on disk at durable.SyncOS
// and durable.SyncDisk; not run by default). On a noisy machine, -repeat N
// interleaves N rounds and keeps the best of each run; -cpuprofile and
// -trace record each run's timed part for go tool pprof and go tool trace.
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
	"runtime"
	"slices"
	"strings"
	"time"
)

const topic = "v1/gateway/telemetry"

// Run names.
const (
	runSDK       = "sdk"
	runUnbatched = "sdk-unbatched"
	runBatched   = "sdk-batched"
	runNaive     = "naive"
	runPacked    = "packed"
	// The sdk run with the durable queue (package durable), at each of
	// its sync levels.
	runDurable     = "sdk-durable"
	runDurableSync = "sdk-durable-sync"
)

var (
	defaultRuns = []string{runSDK, runUnbatched, runNaive, runPacked}
	knownRuns   = []string{runSDK, runUnbatched, runBatched, runNaive, runPacked, runDurable, runDurableSync}
)

type config struct {
	Broker      string // "" starts an embedded broker
	Tbtest      bool   // an embedded tbtest server per run instead
	Token       string // access token for Broker ("" for none)
	AllowRemote bool
	Devices     int
	Entries     int
	Keys        int
	QoS         int
	Linger      time.Duration
	Inflight    int
	Batch       int
	Runs        []string
	Repeat      int
	Duration    time.Duration // cap per run
	Quiet       time.Duration // how long the subscriber may stay silent before points count as lost
	HeapDevices int
	BallastMB   int
	Values      bool
	JSONOnly    bool
	CPUProfile  string
	MemProfile  string
	Trace       string
}

func defaultConfig() config {
	return config{
		Devices: 100, Entries: 2000, Keys: 5, QoS: 1, Inflight: 100, Batch: 10,
		Runs: defaultRuns, Repeat: 1, Duration: 60 * time.Second, Quiet: 3 * time.Second,
		HeapDevices: 100_000,
	}
}

func parseFlags(args []string, errOut io.Writer) (config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&c.Broker, "broker", "", "broker URL, e.g. tcp://127.0.0.1:1883 (default: an embedded mochi broker on 127.0.0.1)")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a -broker that is not on loopback")
	fs.IntVar(&c.Devices, "devices", c.Devices, "devices streaming telemetry")
	fs.IntVar(&c.Entries, "entries", c.Entries, "telemetry entries per device")
	fs.IntVar(&c.Keys, "keys", c.Keys, "keys per entry")
	fs.IntVar(&c.QoS, "qos", c.QoS, "QoS of every publish (0 or 1)")
	fs.DurationVar(&c.Linger, "linger", 0, "SDK coalescing linger")
	fs.IntVar(&c.Inflight, "inflight", c.Inflight, "unacknowledged messages allowed, SDK and raw")
	fs.IntVar(&c.Batch, "batch", c.Batch, "entries per call in the sdk-batched run")
	runs := fs.String("runs", strings.Join(defaultRuns, ","), "runs, comma-separated, of "+strings.Join(knownRuns, ","))
	fs.IntVar(&c.Repeat, "repeat", c.Repeat, "repeat the runs, interleaved, and report the best of each")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "cap on each run")
	fs.IntVar(&c.HeapDevices, "heap-devices", c.HeapDevices, "devices to connect for the heap measurement (0 skips it)")
	fs.IntVar(&c.BallastMB, "ballast", 0, "MiB of idle heap held through every run, standing in for an application's live data: the GC runs less often")
	fs.BoolVar(&c.Values, "values", false, "SDK runs fill Values maps instead of Points")
	fs.BoolVar(&c.JSONOnly, "json-only", false, "print only the JSON line")
	fs.BoolVar(&c.Tbtest, "tbtest", false, "run against an embedded tbtest (fake ThingsBoard) server, fresh for each run, checking what it stored instead of subscribing")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of each run's timed part to FILE, suffixed with the run name")
	fs.StringVar(&c.MemProfile, "memprofile", "", "write a heap profile to FILE after the device heap measurement")
	fs.StringVar(&c.Trace, "trace", "", "write an execution trace of each run's timed part to FILE, suffixed with the run name")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Runs = nil
	for _, r := range strings.Split(*runs, ",") {
		switch r = strings.TrimSpace(r); {
		case r == "all":
			c.Runs = append(c.Runs, defaultRuns...)
		case r != "" && !slices.Contains(c.Runs, r):
			c.Runs = append(c.Runs, r)
		}
	}
	return c, c.validate()
}

// form names how SDK runs give their values.
func (c *config) form() string {
	if c.Values {
		return "values"
	}
	return "points"
}

func (c *config) validate() error {
	switch {
	case c.Devices < 1 || c.Entries < 1 || c.Keys < 1:
		return fmt.Errorf("devices, entries and keys must be positive")
	case c.QoS != 0 && c.QoS != 1:
		return fmt.Errorf("qos %d: ThingsBoard supports 0 and 1", c.QoS)
	case c.Inflight < 1 || c.Inflight > 65535:
		return fmt.Errorf("inflight %d out of 1..65535", c.Inflight)
	case c.Batch < 1 || c.Repeat < 1:
		return fmt.Errorf("batch and repeat must be positive")
	case c.Linger < 0 || c.Duration <= 0:
		return fmt.Errorf("linger and duration must not be negative")
	case c.BallastMB < 0 || c.BallastMB > 1<<16:
		return fmt.Errorf("ballast %d MiB out of 0..65536", c.BallastMB)
	}
	for _, r := range c.Runs {
		if !slices.Contains(knownRuns, r) {
			return fmt.Errorf("unknown run %q (known: %s)", r, strings.Join(knownRuns, ","))
		}
	}
	if c.Tbtest && c.Broker != "" {
		return fmt.Errorf("-tbtest starts its own server: drop -broker")
	}
	if c.Broker != "" && !c.AllowRemote {
		return checkLoopback(c.Broker)
	}
	return nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// errLost is returned by run when a data point did not arrive.
var errLost = errors.New("data points were lost")

// ballast is the -ballast heap.
var ballast []byte

// run executes the configured runs and the heap measurement, writing the
// report to out, the JSON summary last. It fails with errLost if anything
// was lost.
func run(ctx context.Context, cfg config, out io.Writer) error {
	say := func(format string, a ...any) {
		if !cfg.JSONOnly {
			fmt.Fprintf(out, format+"\n", a...)
		}
	}
	brokerName := cfg.Broker
	if cfg.Tbtest {
		brokerName = "tbtest"
	} else if cfg.Broker == "" {
		b, err := startBroker()
		if err != nil {
			return fmt.Errorf("embedded broker: %w", err)
		}
		defer b.Close()
		cfg.Broker, brokerName = b.url, "embedded"
	}
	ds := newDataset(cfg.Devices, cfg.Entries, cfg.Keys)
	// The ballast is never touched: it takes no memory beyond its address
	// space, nothing to scan, and only raises the heap goal of every run
	// alike. It is left out of the heap figures.
	ballast = make([]byte, cfg.BallastMB<<20)
	defer func() { runtime.KeepAlive(ballast); ballast = nil }()
	say("tbgateway bench: %d devices × %d entries × %d keys = %d points, QoS %d, linger %v, in-flight %d, broker %s (%s), GOMAXPROCS %d, ballast %d MiB, SDK entries of %s",
		cfg.Devices, cfg.Entries, cfg.Keys, ds.points(), cfg.QoS, cfg.Linger, cfg.Inflight, brokerName, cfg.Broker, runtime.GOMAXPROCS(0), cfg.BallastMB, cfg.form())

	// With -repeat, runs are interleaved and each figure is the best of its
	// repetitions: on a shared machine noise only ever slows a run down.
	// Losses count over all of them.
	s := newSummary(cfg, brokerName)
	results := map[string]*result{}
	for rep := range cfg.Repeat {
		round := map[string]*result{}
		for _, name := range cfg.Runs {
			r, err := measure(ctx, cfg, ds, name)
			if err != nil {
				return fmt.Errorf("run %s: %w", name, err)
			}
			say("%s", r.inRound(rep, cfg.Repeat))
			s.count(r)
			if b := results[name]; b == nil || r.pointsPerS() > b.pointsPerS() {
				results[name] = r
			}
			round[name] = r
		}
		// The durable ratios within the round: the runs next to each
		// other in time share the machine's state.
		if line := roundLine(rep, round); line != "" {
			say("%s", line)
		}
	}
	s.best(cfg.Runs, results)
	if line := s.durableLine(); line != "" {
		say("%s", line)
	}
	say("%s", s.ratiosLine())

	if cfg.HeapDevices > 0 {
		dh, err := deviceHeap(ctx, cfg)
		if err != nil {
			return fmt.Errorf("device heap: %w", err)
		}
		s.HeapDevices, s.HeapMB100kDevices = cfg.HeapDevices, ptr(mb(dh.bytes))
		say("%s", deviceHeapLine(cfg.HeapDevices, dh))
	} else if cfg.MemProfile != "" {
		if err := writeHeapProfile(cfg.MemProfile); err != nil {
			return err
		}
	}

	line, err := json.Marshal(s)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\n", line)
	if s.Lost > 0 || s.Errors > 0 {
		return fmt.Errorf("%w: %d lost, %d failed calls or publishes", errLost, s.Lost, s.Errors)
	}
	return nil
}
