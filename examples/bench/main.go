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
// window of -inflight unacknowledged messages, like the SDK's). On a noisy
// machine, -repeat N interleaves N rounds and keeps the best of each run;
// -cpuprofile and -trace record each run's timed part for go tool pprof and
// go tool trace.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/durable"
)

const (
	topic    = "v1/gateway/telemetry"
	baseTS   = int64(1_700_000_000_000)
	maxBytes = tbgateway.DefaultMaxPayloadSize // remaining length, as the SDK counts it
)

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
		u, err := url.Parse(c.Broker)
		if err != nil || u.Hostname() == "" {
			return fmt.Errorf("broker URL %q", c.Broker)
		}
		if h := u.Hostname(); h != "localhost" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("broker %s is not on loopback: a load test floods it (use -allow-remote)", c.Broker)
			}
		}
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
	s := summary{
		Devices: cfg.Devices, Entries: cfg.Entries, Keys: cfg.Keys, QoS: cfg.QoS,
		LingerMS: ms(cfg.Linger), Inflight: cfg.Inflight, Broker: brokerName, Cores: runtime.GOMAXPROCS(0),
		Repeat: cfg.Repeat, BallastMB: cfg.BallastMB, Form: cfg.form(),
	}
	results := map[string]*result{}
	for rep := range cfg.Repeat {
		round := map[string]*result{}
		for _, name := range cfg.Runs {
			r, err := measure(ctx, cfg, ds, name)
			if err != nil {
				return fmt.Errorf("run %s: %w", name, err)
			}
			if cfg.Repeat > 1 {
				labelled := *r
				labelled.Name = fmt.Sprintf("%s #%d", name, rep+1)
				say("%s", &labelled)
			} else {
				say("%s", r)
			}
			s.Lost += r.Lost
			s.Duplicates += r.Dups
			s.Errors += r.Errors
			if b := results[name]; b == nil || r.pointsPerS() > b.pointsPerS() {
				results[name] = r
			}
			round[name] = r
		}
		// The durable ratios within the round: the runs next to each
		// other in time share the machine's state.
		if m := round[runSDK]; m != nil && m.pointsPerS() > 0 && (round[runDurable] != nil || round[runDurableSync] != nil) {
			line := fmt.Sprintf("round %d:", rep+1)
			for _, n := range []string{runDurable, runDurableSync} {
				if d := round[n]; d != nil {
					line += fmt.Sprintf("  %s/sdk %.2f×", n, d.pointsPerS()/m.pointsPerS())
				}
			}
			say("%s", line)
		}
	}
	for _, name := range cfg.Runs {
		s.Runs = append(s.Runs, results[name].json())
	}

	if r := results[runSDK]; r != nil {
		s.PointsPerS, s.MessagesPerS, s.BytesPerS = ptr(r.pointsPerS()), ptr(r.perS(r.Messages)), ptr(r.perS(r.Bytes))
		s.LatencyP50MS, s.LatencyP99MS, s.PeakHeapMB = ptr(ms(r.P50)), ptr(ms(r.P99)), ptr(mb(r.PeakHeap))
	}
	rate := func(name string) *float64 {
		if r := results[name]; r != nil {
			return ptr(r.pointsPerS())
		}
		return nil
	}
	ratio := func(a, b *float64) *float64 {
		if a == nil || b == nil || *b == 0 {
			return nil
		}
		return ptr(*a / *b)
	}
	s.NaivePointsPerS, s.PackedPointsPerS = rate(runNaive), rate(runPacked)
	s.UnbatchedPointsPerS, s.BatchedPointsPerS = rate(runUnbatched), rate(runBatched)
	s.RatioVsRawPacked = ratio(s.PointsPerS, s.PackedPointsPerS)
	s.RatioVsNaive = ratio(s.PointsPerS, s.NaivePointsPerS)
	s.RatioUnbatchedVsNaive = ratio(s.UnbatchedPointsPerS, s.NaivePointsPerS)
	s.RatioBatchedVsPacked = ratio(s.BatchedPointsPerS, s.PackedPointsPerS)
	s.DurablePointsPerS, s.DurableSyncPointsPerS = rate(runDurable), rate(runDurableSync)
	s.RatioDurableVsMemory = ratio(s.DurablePointsPerS, s.PointsPerS)
	s.RatioDurableSyncVsMemory = ratio(s.DurableSyncPointsPerS, s.PointsPerS)
	if s.RatioDurableVsMemory != nil || s.RatioDurableSyncVsMemory != nil {
		say("durable: sdk-durable/sdk %s   sdk-durable-sync/sdk %s", fmtRatio(s.RatioDurableVsMemory), fmtRatio(s.RatioDurableSyncVsMemory))
	}
	say("ratios: sdk/raw-packed %s   sdk/naive %s   sdk-unbatched/naive %s   sdk-batched/raw-packed %s",
		fmtRatio(s.RatioVsRawPacked), fmtRatio(s.RatioVsNaive), fmtRatio(s.RatioUnbatchedVsNaive), fmtRatio(s.RatioBatchedVsPacked))

	if cfg.HeapDevices > 0 {
		dh, err := deviceHeap(ctx, cfg)
		if err != nil {
			return fmt.Errorf("device heap: %w", err)
		}
		s.HeapDevices, s.HeapMB100kDevices = cfg.HeapDevices, ptr(mb(dh.bytes))
		say("%d devices connected in %.2f s (%.0f connects/s): SDK heap +%.2f MB (%.0f bytes/device)",
			cfg.HeapDevices, dh.took.Seconds(), float64(cfg.HeapDevices)/dh.took.Seconds(), mb(dh.bytes), float64(dh.bytes)/float64(cfg.HeapDevices))
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

// summary is the last output line.
type summary struct {
	PointsPerS            *float64 `json:"points_per_s"`
	MessagesPerS          *float64 `json:"messages_per_s"`
	BytesPerS             *float64 `json:"bytes_per_s"`
	LatencyP50MS          *float64 `json:"latency_p50_ms"`
	LatencyP99MS          *float64 `json:"latency_p99_ms"`
	PeakHeapMB            *float64 `json:"peak_heap_mb"`
	Lost                  int64    `json:"lost"`
	Duplicates            int64    `json:"duplicates"`
	Errors                int64    `json:"errors"`
	NaivePointsPerS       *float64 `json:"naive_points_per_s"`
	PackedPointsPerS      *float64 `json:"packed_points_per_s"`
	UnbatchedPointsPerS   *float64 `json:"unbatched_points_per_s"`
	BatchedPointsPerS     *float64 `json:"batched_points_per_s"`
	RatioVsRawPacked      *float64 `json:"ratio_vs_raw_packed"`
	RatioVsNaive          *float64 `json:"ratio_vs_naive"`
	RatioUnbatchedVsNaive *float64 `json:"ratio_unbatched_vs_naive"`
	RatioBatchedVsPacked  *float64 `json:"ratio_batched_vs_raw_packed"`
	DurablePointsPerS     *float64 `json:"durable_points_per_s"`
	DurableSyncPointsPerS *float64 `json:"durable_sync_points_per_s"`
	// RatioDurableVsMemory: sdk-durable (durable.SyncOS) against sdk,
	// best of each; the per-round ratios are in the text output.
	RatioDurableVsMemory     *float64     `json:"ratio_durable_vs_memory"`
	RatioDurableSyncVsMemory *float64     `json:"ratio_durable_sync_vs_memory"`
	HeapMB100kDevices        *float64     `json:"heap_mb_100k_devices"`
	HeapDevices              int          `json:"heap_devices"`
	BallastMB                int          `json:"ballast_mb"`
	Form                     string       `json:"sdk_form"`
	Devices                  int          `json:"devices"`
	Entries                  int          `json:"entries"`
	Keys                     int          `json:"keys"`
	QoS                      int          `json:"qos"`
	LingerMS                 float64      `json:"linger_ms"`
	Inflight                 int          `json:"inflight"`
	Broker                   string       `json:"broker"`
	Cores                    int          `json:"gomaxprocs"`
	Repeat                   int          `json:"repeat"`
	Runs                     []resultJSON `json:"runs"`
}

func ptr(f float64) *float64 { return &f }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

func fmtRatio(f *float64) string {
	if f == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f×", *f)
}

// ---------------------------------------------------------------- data

// dataset is the deterministic data every run sends: key j of entry i of
// device d has a float value for even j and an integer for odd j, so both
// number kinds are on the wire; entry i has the timestamp baseTS+i.
type dataset struct {
	devices []string // names
	quoted  []string // names as JSON strings
	keys    []string // in the SDK's (sorted) order
	entries int

	// The raw runs' payloads, built once.
	naive, packed *payloadSet
	packedQoS     byte
}

// payloadSet holds pre-encoded payloads back to back outside the Go heap,
// so that a raw run's heap, like an SDK run's, holds only what the run
// allocates as it goes: hundreds of megabytes of test data on the heap
// would make the GC run far less often during raw runs than during SDK
// runs.
type payloadSet struct {
	arena []byte
	ends  []byte // little-endian uint64 end offsets into arena, also off the heap
}

func newPayloadSet(ps [][]byte) *payloadSet {
	size := 0
	for _, p := range ps {
		size += len(p)
	}
	s := &payloadSet{}
	s.arena, _ = offHeap(max(size, 1))
	s.ends, _ = offHeap(max(8*len(ps), 1))
	for _, p := range ps {
		s.arena = append(s.arena, p...)
		s.ends = binary.LittleEndian.AppendUint64(s.ends, uint64(len(s.arena)))
	}
	return s
}

func (s *payloadSet) len() int { return len(s.ends) / 8 }

// at returns payload i.
func (s *payloadSet) at(i int) []byte {
	start := uint64(0)
	if i > 0 {
		start = binary.LittleEndian.Uint64(s.ends[8*(i-1):])
	}
	end := binary.LittleEndian.Uint64(s.ends[8*i:])
	return s.arena[start:end:end]
}

func (ds *dataset) naiveSet() *payloadSet {
	if ds.naive == nil {
		ds.naive = newPayloadSet(ds.naivePayloads())
	}
	return ds.naive
}

func (ds *dataset) packedSet(qos byte) *payloadSet {
	if ds.packed == nil || ds.packedQoS != qos {
		ds.packed, ds.packedQoS = newPayloadSet(ds.packedPayloads(qos)), qos
	}
	return ds.packed
}

func newDataset(devices, entries, keys int) *dataset {
	ds := &dataset{entries: entries}
	for d := range devices {
		name := fmt.Sprintf("Device %04d", d)
		ds.devices = append(ds.devices, name)
		ds.quoted = append(ds.quoted, strconv.Quote(name))
	}
	for j := range keys {
		ds.keys = append(ds.keys, "k"+strconv.Itoa(j))
	}
	slices.Sort(ds.keys)
	return ds
}

func (ds *dataset) points() int64 {
	return int64(len(ds.devices)) * int64(ds.entries) * int64(len(ds.keys))
}

// floatValue is never integral, so strconv's shortest form equals the SDK's.
func floatValue(d, i, j int) float64 { return float64((d*7+i*3+j)%100_000)/4 + 0.125 }

func intValue(d, i, j int) int64 { return int64((d*1_000_003 + i*31 + j*7) % 1_000_000) }

// fill sets the values of entry i of device d in v, as an application
// would before a call.
func (ds *dataset) fill(v tbgateway.Values, d, i int) {
	for j, k := range ds.keys {
		if j%2 == 0 {
			v[k] = floatValue(d, i, j)
		} else {
			v[k] = intValue(d, i, j)
		}
	}
}

// fillPoints is fill for an entry of Points.
func (ds *dataset) fillPoints(ps []tbgateway.Point, d, i int) {
	for j, k := range ds.keys {
		if j%2 == 0 {
			ps[j] = tbgateway.Float64(k, floatValue(d, i, j))
		} else {
			ps[j] = tbgateway.Int64(k, intValue(d, i, j))
		}
	}
}

// appendEntry appends entry i of device d exactly as the SDK encodes it:
// {"ts":..,"values":{..}}.
func (ds *dataset) appendEntry(b []byte, d, i int) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, baseTS+int64(i), 10)
	b = append(b, `,"values":{`...)
	for j, k := range ds.keys {
		if j > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, k)
		b = append(b, ':')
		if j%2 == 0 {
			b = strconv.AppendFloat(b, floatValue(d, i, j), 'f', -1, 64)
		} else {
			b = strconv.AppendInt(b, intValue(d, i, j), 10)
		}
	}
	return append(b, "}}"...)
}

// naivePayloads is one message per device entry, entries of all devices
// interleaved as they would be produced in real time.
func (ds *dataset) naivePayloads() [][]byte {
	out := make([][]byte, 0, len(ds.devices)*ds.entries)
	for i := range ds.entries {
		for d := range ds.devices {
			b := make([]byte, 0, 48+len(ds.quoted[d])+24*len(ds.keys))
			b = append(b, '{')
			b = append(b, ds.quoted[d]...)
			b = append(b, ":["...)
			b = ds.appendEntry(b, d, i)
			out = append(out, append(b, "]}"...))
		}
	}
	return out
}

// packedPayloads packs the same interleaved entries greedily into messages
// whose MQTT remaining length (topic, packet id, payload) stays within
// maxBytes, entries grouped by device in order of first appearance: the
// rule the SDK packs by.
func (ds *dataset) packedPayloads(qos byte) [][]byte {
	overhead := 2 + len(topic)
	if qos > 0 {
		overhead += 2
	}
	var out [][]byte
	groups := make([][]byte, len(ds.devices)) // per device in this message: its comma-joined entries
	var order []int                           // devices in order of first appearance
	size := overhead + 2
	flush := func() {
		p := make([]byte, 0, size-overhead)
		p = append(p, '{')
		for n, d := range order {
			if n > 0 {
				p = append(p, ',')
			}
			p = append(p, ds.quoted[d]...)
			p = append(p, ":["...)
			p = append(p, groups[d]...)
			p = append(p, ']')
			groups[d] = groups[d][:0]
		}
		out = append(out, append(p, '}'))
		order, size = order[:0], overhead+2
	}
	var entry []byte
	for i := range ds.entries {
		for d := range ds.devices {
			entry = ds.appendEntry(entry[:0], d, i)
			add := 1 + len(entry)
			if len(groups[d]) == 0 {
				add = len(ds.quoted[d]) + 3 + len(entry)
				if len(order) > 0 {
					add++
				}
			}
			if len(order) > 0 && size+add > maxBytes {
				flush()
				add = len(ds.quoted[d]) + 3 + len(entry)
			}
			if len(groups[d]) == 0 {
				order = append(order, d)
			} else {
				groups[d] = append(groups[d], ',')
			}
			groups[d] = append(groups[d], entry...)
			size += add
		}
	}
	if len(order) > 0 {
		flush()
	}
	return out
}

// ---------------------------------------------------------------- runs

type result struct {
	Name     string
	Points   int64 // delivered: received by the subscriber, duplicates apart
	Entries  int64 // device entries sent
	Messages int64 // published
	Bytes    int64 // payload bytes received by the subscriber
	Wall     time.Duration
	P50, P99 time.Duration
	PeakHeap uint64 // peak of live+unswept heap objects during the timed part
	BaseHeap uint64 // at its start
	Lost     int64
	Dups     int64
	Errors   int64         // failed calls or publishes
	SubLag   time.Duration // from the last ack until the subscriber had everything
	// Heap allocations in the process during the timed part: the publisher,
	// the subscriber and, when embedded, the broker.
	Allocs, AllocBytes uint64
}

// perEntry divides n by the device entries sent.
func (r *result) perEntry(n uint64) float64 { return float64(n) / float64(r.Entries) }

func (r *result) perS(n int64) float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(n) / r.Wall.Seconds()
}

func (r *result) pointsPerS() float64 { return r.perS(r.Points) }

func (r *result) String() string {
	avg := 0.0
	if r.Messages > 0 {
		avg = float64(r.Bytes) / float64(r.Messages) / 1024
	}
	return fmt.Sprintf("%-16s %5.2f M points/s %7.0f msg/s %6.1f MB/s  p50 %7.2f ms  p99 %7.2f ms  heap peak %5.1f MB (base %4.1f)  lost %d  dup %d  errors %d  [%d points in %.3f s, %d msgs of %.1f KiB avg, %.1f allocs (%.0f B) per entry, subscriber done %+.0f ms after last ack]",
		r.Name, r.pointsPerS()/1e6, r.perS(r.Messages), r.perS(r.Bytes)/(1<<20), ms(r.P50), ms(r.P99),
		mb(r.PeakHeap), mb(r.BaseHeap), r.Lost, r.Dups, r.Errors, r.Points, r.Wall.Seconds(), r.Messages, avg,
		r.perEntry(r.Allocs), r.perEntry(r.AllocBytes), ms(r.SubLag))
}

type resultJSON struct {
	Name               string  `json:"name"`
	Points             int64   `json:"points"`
	Messages           int64   `json:"messages"`
	Bytes              int64   `json:"bytes"`
	Seconds            float64 `json:"seconds"`
	PointsPerS         float64 `json:"points_per_s"`
	MessagesPerS       float64 `json:"messages_per_s"`
	BytesPerS          float64 `json:"bytes_per_s"`
	LatencyP50MS       float64 `json:"latency_p50_ms"`
	LatencyP99MS       float64 `json:"latency_p99_ms"`
	PeakHeapMB         float64 `json:"peak_heap_mb"`
	Lost               int64   `json:"lost"`
	Duplicates         int64   `json:"duplicates"`
	Errors             int64   `json:"errors"`
	SubLagMS           float64 `json:"subscriber_lag_ms"`
	AllocsPerEntry     float64 `json:"allocs_per_entry"`
	AllocBytesPerEntry float64 `json:"alloc_bytes_per_entry"`
}

func (r *result) json() resultJSON {
	return resultJSON{
		Name: r.Name, Points: r.Points, Messages: r.Messages, Bytes: r.Bytes, Seconds: r.Wall.Seconds(),
		PointsPerS: r.pointsPerS(), MessagesPerS: r.perS(r.Messages), BytesPerS: r.perS(r.Bytes),
		LatencyP50MS: ms(r.P50), LatencyP99MS: ms(r.P99), PeakHeapMB: mb(r.PeakHeap),
		Lost: r.Lost, Duplicates: r.Dups, Errors: r.Errors, SubLagMS: ms(r.SubLag),
		AllocsPerEntry: r.perEntry(r.Allocs), AllocBytesPerEntry: r.perEntry(r.AllocBytes),
	}
}

// outcome is what a publisher reports about its timed part.
type outcome struct {
	wall     time.Duration // first publish to last ack
	messages int64
	lat      []time.Duration // per call or message; failed ones excluded
	errors   int64
}

// publisher is one run: setup connects and prepares everything untimed,
// then fire sends all the data and waits for the acks.
type publisher interface {
	fire(ctx context.Context) outcome
	close()
}

func setup(ctx context.Context, cfg config, ds *dataset, name string) (publisher, error) {
	switch name {
	case runSDK:
		return newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithCoalescing(cfg.Linger))
	case runBatched:
		return newSDKPublisher(ctx, cfg, ds, cfg.Batch, tbgateway.WithCoalescing(cfg.Linger))
	case runUnbatched:
		return newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithoutCoalescing())
	case runDurable, runDurableSync:
		level := durable.SyncOS
		if name == runDurableSync {
			level = durable.SyncDisk
		}
		return newDurablePublisher(ctx, cfg, ds, level)
	case runNaive:
		return newRawPublisher(cfg, ds.naiveSet())
	case runPacked:
		return newRawPublisher(cfg, ds.packedSet(byte(cfg.QoS)))
	}
	return nil, fmt.Errorf("unknown run %q", name)
}

// measure runs one publisher with a fresh subscriber verifying every point
// (with -tbtest, against a fresh tbtest server whose storage is verified).
func measure(ctx context.Context, cfg config, ds *dataset, name string) (*result, error) {
	if cfg.Tbtest {
		return measureTbtest(ctx, cfg, ds, name)
	}
	v := newVerifier(ds)
	sub, err := subscribe(cfg.Broker, v)
	if err != nil {
		return nil, err
	}
	defer sub.Disconnect(100)
	p, err := setup(ctx, cfg, ds, name)
	if err != nil {
		return nil, err
	}
	defer p.close()

	t, err := timed(ctx, cfg, p, name, func() uint64 { return v.retained() + uint64(len(ballast)) })
	if err != nil {
		return nil, err
	}
	lag := v.wait(ctx, cfg.Quiet).Sub(t.ackedAt)
	st := v.stats()
	r := t.result(name, ds, st, st.malformed)
	r.SubLag = lag
	return r, nil
}

// timing is what the timed part of a run measured.
type timing struct {
	o                  outcome
	ackedAt            time.Time
	base, peak         uint64
	allocs, allocBytes uint64
}

// timed fires p inside what every run shares: the profiles, a GC before,
// the heap sampler (retained is the heap that is not the publisher's) and
// the allocation counts.
func timed(ctx context.Context, cfg config, p publisher, name string, retained func() uint64) (timing, error) {
	stopProfile, err := startProfiles(cfg, name)
	if err != nil {
		return timing{}, err
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	heap := startHeapSampler(retained)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	t := timing{o: p.fire(rctx)}
	t.ackedAt = time.Now()
	cancel()
	stopProfile()
	t.base, t.peak = heap.stop()
	runtime.ReadMemStats(&m1)
	t.allocs, t.allocBytes = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	return t, nil
}

// result is the run's figures from its timing and what was verified;
// verifyErrors are the verifier's errors to add to the publisher's.
func (t timing) result(name string, ds *dataset, st verifyStats, verifyErrors int64) *result {
	r := &result{
		Name: name, Points: st.unique, Entries: int64(len(ds.devices) * ds.entries), Messages: t.o.messages, Bytes: st.bytes, Wall: t.o.wall,
		PeakHeap: t.peak, BaseHeap: t.base, Lost: ds.points() - st.unique, Dups: st.dups,
		Errors: t.o.errors + verifyErrors, Allocs: t.allocs, AllocBytes: t.allocBytes,
	}
	r.P50, r.P99 = percentile(t.o.lat, 0.50), percentile(t.o.lat, 0.99)
	return r
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[max(0, int(math.Ceil(p*float64(len(lat))))-1)]
}

// sdkPublisher streams through the public API: one goroutine per device,
// each calling its Device's PublishTelemetryAsync for batch entries at a
// time, with entries it refills for every call as an application would:
// their Points, or with -values their Values maps.
type sdkPublisher struct {
	g       *tbgateway.Gateway
	ds      *dataset
	batch   int
	values  bool
	cleanup func()
}

func newSDKPublisher(ctx context.Context, cfg config, ds *dataset, batch int, mode ...tbgateway.Option) (*sdkPublisher, error) {
	g, err := tbgateway.Dial(ctx, cfg.Broker, append(append([]tbgateway.Option{
		tbgateway.WithClientID(clientID("bench-sdk-")),
		tbgateway.WithQoS(byte(cfg.QoS)),
		tbgateway.WithMaxInflight(cfg.Inflight)},
		cfg.tokenOption()...), mode...)...)
	if err != nil {
		return nil, err
	}
	return &sdkPublisher{g: g, ds: ds, batch: batch, values: cfg.Values}, nil
}

// latencyEvery: in runs of sampleFrom calls or messages or more, the
// latency of one in latencyEvery is measured, plenty for percentiles, so
// that reading the clock (about 50 ns a read on this machine, twice per
// call) stays out of the other calls.
const (
	latencyEvery = 8
	sampleFrom   = 100_000
)

// sampling returns how many calls of n share one latency measurement.
func sampling(n int) int {
	if n >= sampleFrom {
		return latencyEvery
	}
	return 1
}

// sdkCalls tracks the outcome of every call.
type sdkCalls struct {
	t0      time.Time
	every   int             // latency of one call in every
	lat     []time.Duration // per sampled call, -1 until done or when failed
	pending atomic.Int64
	errors  atomic.Int64
	end     atomic.Int64 // since t0, of the last callback
	done    chan struct{}
}

// finish records a call's outcome: idx is the call's index when its latency
// is sampled (it started at start), -1 otherwise.
func (c *sdkCalls) finish(idx int, start time.Duration, err error) {
	now := time.Duration(-1)
	if err != nil {
		c.errors.Add(1)
	} else if idx >= 0 {
		now = time.Since(c.t0)
		c.lat[idx/c.every] = now - start
	}
	if c.pending.Add(-1) == 0 {
		if now < 0 {
			now = time.Since(c.t0)
		}
		c.end.Store(int64(now))
		close(c.done)
	}
}

func (p *sdkPublisher) fire(ctx context.Context) outcome {
	devices, entries := len(p.ds.devices), p.ds.entries
	perDevice := (entries + p.batch - 1) / p.batch
	calls := devices * perDevice
	every := sampling(calls)
	c := &sdkCalls{every: every, lat: make([]time.Duration, (calls+every-1)/every), done: make(chan struct{})}
	for i := range c.lat {
		c.lat[i] = -1
	}
	c.pending.Store(int64(calls))
	before := p.g.Stats().Published
	start := make(chan struct{})
	unsampled := func(err error) { c.finish(-1, 0, err) }
	var wg sync.WaitGroup
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := p.g.Device(p.ds.devices[d])
			batch := make([]tbgateway.Entry, p.batch)
			for k := range batch {
				if p.values {
					batch[k].Values = make(tbgateway.Values, len(p.ds.keys))
				} else {
					batch[k].Points = make([]tbgateway.Point, len(p.ds.keys))
				}
			}
			<-start
			for call := range perDevice {
				first := call * p.batch
				n := min(p.batch, entries-first)
				for k := range n {
					batch[k].TS = baseTS + int64(first+k)
					if p.values {
						p.ds.fill(batch[k].Values, d, first+k)
					} else {
						p.ds.fillPoints(batch[k].Points, d, first+k)
					}
				}
				idx := d*perDevice + call
				// Calls whose latency is not sampled share one callback:
				// the harness allocates nothing for them.
				done := unsampled
				var t time.Duration
				if idx%every == 0 {
					t = time.Since(c.t0)
					done = func(err error) { c.finish(idx, t, err) }
				}
				if err := dev.PublishTelemetryAsync(ctx, done, batch[:n]...); err != nil {
					done(err)
				}
			}
		}()
	}
	c.t0 = time.Now()
	close(start)
	select {
	case <-c.done:
	case <-ctx.Done():
		// Capped: calls still pending count as failed, and latencies are
		// not read while late callbacks may still write them.
		wg.Wait()
		return outcome{wall: time.Since(c.t0), messages: int64(p.g.Stats().Published - before),
			errors: c.errors.Load() + c.pending.Load()}
	}
	wg.Wait()
	o := outcome{wall: time.Duration(c.end.Load()), messages: int64(p.g.Stats().Published - before)}
	for _, l := range c.lat {
		if l >= 0 {
			o.lat = append(o.lat, l)
		}
	}
	o.errors = c.errors.Load()
	return o
}

func (p *sdkPublisher) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.g.Close(ctx)
	if p.cleanup != nil {
		p.cleanup()
	}
}

// newDurablePublisher is the sdk run with a durable queue in a folder of
// its own under the system's temporary directory (the real disk here).
func newDurablePublisher(ctx context.Context, cfg config, ds *dataset, level durable.Sync) (*sdkPublisher, error) {
	dir, err := os.MkdirTemp("", "tbgateway-bench-queue-")
	if err != nil {
		return nil, err
	}
	q, err := durable.Open(dir, durable.WithSync(level))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p, err := newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithCoalescing(cfg.Linger), tbgateway.WithQueueStore(q))
	if err != nil {
		_ = q.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p.cleanup = func() { _ = os.RemoveAll(dir) }
	return p, nil
}

// rawPublisher sends pre-encoded payloads with plain paho, at most
// inflight of them unacknowledged: a semaphore bounds the window and a
// collector waits for the tokens in publish order (brokers acknowledge a
// connection's publishes in order), recording each one's latency.
type rawPublisher struct {
	c        paho.Client
	payloads *payloadSet
	qos      byte
	inflight int
}

func newRawPublisher(cfg config, payloads *payloadSet) (*rawPublisher, error) {
	c, err := pahoConnect(cfg.Broker, "bench-raw-", cfg.pahoToken)
	if err != nil {
		return nil, err
	}
	return &rawPublisher{c: c, payloads: payloads, qos: byte(cfg.QoS), inflight: cfg.Inflight}, nil
}

func (p *rawPublisher) fire(ctx context.Context) outcome {
	type sent struct {
		tok   paho.Token
		start time.Duration
	}
	window := make(chan struct{}, p.inflight)
	pending := make(chan sent, p.inflight)
	total := p.payloads.len()
	every := sampling(total)
	o := outcome{lat: make([]time.Duration, 0, total/every+1)}
	var end time.Duration
	collected := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(collected)
		for s := range pending {
			select {
			case <-s.tok.Done():
				if s.tok.Error() != nil {
					o.errors++
				} else if s.start >= 0 {
					o.lat = append(o.lat, time.Since(t0)-s.start)
				}
			case <-ctx.Done():
				o.errors++
			}
			<-window
		}
		end = time.Since(t0)
	}()
publish:
	for i := range total {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			break publish
		}
		start := time.Duration(-1)
		if i%every == 0 {
			start = time.Since(t0)
		}
		pending <- sent{p.c.Publish(topic, p.qos, false, p.payloads.at(i)), start}
		o.messages++
	}
	close(pending)
	<-collected
	o.errors += int64(total) - o.messages
	o.wall = end
	return o
}

func (p *rawPublisher) close() { p.c.Disconnect(100) }

// ---------------------------------------------------------------- subscriber

// verifier counts, per device and entry, the data points the subscriber
// received: exact, duplicates apart. While a run is timed it only copies
// the payloads aside, outside the Go heap where it can, and scans them once
// the run is over, so that checking takes neither CPU nor GC time from the
// publisher being measured; past heldMax bytes it scans as they arrive.
type verifier struct {
	ds    *dataset
	index map[string]int // device name as on the wire (unquoted) -> index

	mu        sync.Mutex
	arena     []byte   // held payloads, back to back
	offHeap   bool     // arena is mapped outside the Go heap
	held      [][]byte // in arena
	heldBytes atomic.Int64
	deferred  bool     // hold payloads instead of scanning them
	seen      []uint64 // bit per (device, entry)
	st        verifyStats
	changedAt time.Time
}

// ballast is the -ballast heap.
var ballast []byte

// heldMax bounds the payloads a verifier holds.
const heldMax = 256 << 20

type verifyStats struct {
	messages, bytes   int64
	unique, dups, bad int64 // data points
	malformed         int64 // messages
}

func newVerifier(ds *dataset) *verifier {
	v := &verifier{ds: ds, index: make(map[string]int, len(ds.devices)), deferred: true,
		seen: make([]uint64, (len(ds.devices)*ds.entries+63)/64), changedAt: time.Now()}
	for d, q := range ds.quoted {
		v.index[q[1:len(q)-1]] = d
	}
	size := min(heldMax, int(ds.points())*64+1<<20)
	v.arena, v.offHeap = offHeap(size)
	// Touch every page now: faulting them in while a run is timed would
	// take the publisher's CPU (about 0.1 s per 5 M points here).
	full := v.arena[:cap(v.arena)]
	for i := 0; i < len(full); i += 4096 {
		full[i] = 0
	}
	return v
}

func (v *verifier) add(payload []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.st.messages++
	v.st.bytes += int64(len(payload))
	v.changedAt = time.Now()
	if n := len(v.arena); v.deferred && cap(v.arena)-n >= len(payload) {
		v.arena = append(v.arena, payload...)
		v.held = append(v.held, v.arena[n:len(v.arena):len(v.arena)])
		v.heldBytes.Add(int64(len(payload)))
		return
	}
	v.scan(payload)
}

// retained is what the verifier holds of the Go heap, to be left out of
// the publisher's peak.
func (v *verifier) retained() uint64 {
	if v.offHeap {
		return 0
	}
	return uint64(v.heldBytes.Load())
}

// scanHeld stops holding payloads and scans those held.
func (v *verifier) scanHeld() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.deferred {
		return
	}
	v.deferred = false
	for _, p := range v.held {
		v.scan(p)
	}
	v.held = nil
	v.heldBytes.Store(0)
	if v.offHeap {
		freeOffHeap(v.arena)
	}
	v.arena = nil
}

func (v *verifier) scan(payload []byte) {
	ok := scanTelemetry(payload, func(dev []byte, ts int64, points int) {
		d, known := v.index[string(dev)]
		i := ts - baseTS
		if !known || i < 0 || i >= int64(v.ds.entries) || points != len(v.ds.keys) {
			v.st.bad += int64(max(points, 0))
			return
		}
		bit := d*v.ds.entries + int(i)
		if v.seen[bit/64]&(1<<(bit%64)) != 0 {
			v.st.dups += int64(points)
			return
		}
		v.seen[bit/64] |= 1 << (bit % 64)
		v.st.unique += int64(points)
	})
	if !ok {
		v.st.malformed++
	}
}

func (v *verifier) stats() verifyStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st
}

// wait scans what was held, then returns when every point arrived, or
// nothing arrived for quiet, with the time the last message arrived.
func (v *verifier) wait(ctx context.Context, quiet time.Duration) time.Time {
	v.scanHeld()
	want := v.ds.points()
	for {
		v.mu.Lock()
		done, last := v.st.unique >= want, v.changedAt
		v.mu.Unlock()
		if done || time.Since(last) > quiet || ctx.Err() != nil {
			return last
		}
		time.Sleep(time.Millisecond)
	}
}

func subscribe(broker string, v *verifier) (paho.Client, error) {
	// Messages are handled in order on paho's router goroutine; the
	// handler only keeps the payload while the run is timed.
	c, err := pahoConnect(broker, "bench-sub-", func(o *paho.ClientOptions) { o.SetOrderMatters(true) })
	if err != nil {
		return nil, err
	}
	tok := c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { v.add(m.Payload()) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	return c, nil
}

func pahoConnect(broker, prefix string, adjust func(*paho.ClientOptions)) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(clientID(prefix)).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetKeepAlive(30 * time.Second)
	if adjust != nil {
		adjust(o)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", broker, tok.Error())
	}
	return c, nil
}

func clientID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// scanTelemetry walks a v1/gateway/telemetry payload,
// {"dev":[{"ts":N,"values":{..}},..],..}, calling visit for every entry with
// its device (raw JSON string contents), timestamp and number of values. It
// reports whether the payload was well formed.
func scanTelemetry(p []byte, visit func(dev []byte, ts int64, points int)) bool {
	s := scanner{b: p}
	ok := s.object(func(dev []byte) bool {
		return s.array(func() bool {
			ts, points := int64(-1), -1
			ok := s.object(func(key []byte) bool {
				switch string(key) {
				case "ts":
					var ok bool
					ts, ok = s.integer()
					return ok
				case "values":
					points = 0
					return s.object(func([]byte) bool { points++; return s.skip() })
				}
				return s.skip()
			})
			if ok {
				visit(dev, ts, points)
			}
			return ok
		})
	})
	s.space()
	return ok && s.i == len(s.b)
}

// scanner is a minimal JSON reader for scanTelemetry.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// next consumes and returns the next non-space byte, 0 at the end.
func (s *scanner) next() byte {
	s.space()
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *scanner) peek() byte {
	s.space()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *scanner) str() ([]byte, bool) {
	if s.next() != '"' {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			s.i += 2
		case '"':
			s.i++
			return s.b[start : s.i-1], true
		default:
			s.i++
		}
	}
	return nil, false
}

// object reads {"key":value,..}, member calling member for each key to
// read its value.
func (s *scanner) object(member func(key []byte) bool) bool {
	if s.next() != '{' {
		return false
	}
	if s.peek() == '}' {
		s.i++
		return true
	}
	for {
		k, ok := s.str()
		if !ok || s.next() != ':' || !member(k) {
			return false
		}
		switch s.next() {
		case ',':
		case '}':
			return true
		default:
			return false
		}
	}
}

func (s *scanner) array(elem func() bool) bool {
	if s.next() != '[' {
		return false
	}
	if s.peek() == ']' {
		s.i++
		return true
	}
	for {
		if !elem() {
			return false
		}
		switch s.next() {
		case ',':
		case ']':
			return true
		default:
			return false
		}
	}
}

func (s *scanner) integer() (int64, bool) {
	s.space()
	start := s.i
	for s.i < len(s.b) && (s.b[s.i] == '-' || s.b[s.i] >= '0' && s.b[s.i] <= '9') {
		s.i++
	}
	n, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
	return n, err == nil
}

// skip reads any value.
func (s *scanner) skip() bool {
	switch s.peek() {
	case '"':
		_, ok := s.str()
		return ok
	case '{':
		return s.object(func([]byte) bool { return s.skip() })
	case '[':
		return s.array(s.skip)
	case 0:
		return false
	}
	start := s.i // number or literal
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return s.i > start
		}
		s.i++
	}
	return s.i > start
}

// ---------------------------------------------------------------- heap

// heapSampler records the peak of heap objects (live and not yet swept,
// like MemStats.HeapAlloc) every few milliseconds, without stopping the
// world.
type heapSampler struct {
	stopc chan struct{}
	done  chan struct{}
	base  uint64
	peak  uint64
}

const heapMetric = "/memory/classes/heap/objects:bytes"

func readHeap(s []metrics.Sample) uint64 {
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// startHeapSampler samples the heap, less what exclude reports held by
// the bench itself.
func startHeapSampler(exclude func() uint64) *heapSampler {
	h := &heapSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	s := []metrics.Sample{{Name: heapMetric}}
	read := func() uint64 {
		held, heap := exclude(), readHeap(s)
		return heap - min(held, heap)
	}
	h.base = read()
	h.peak = h.base
	go func() {
		defer close(h.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			h.peak = max(h.peak, read())
			select {
			case <-t.C:
			case <-h.stopc:
				return
			}
		}
	}()
	return h
}

func (h *heapSampler) stop() (base, peak uint64) {
	close(h.stopc)
	<-h.done
	return h.base, h.peak
}

type deviceHeapResult struct {
	bytes uint64
	took  time.Duration
}

// deviceHeap connects cfg.HeapDevices devices through one gateway and
// returns how much the heap grew, measured after a full GC with the gateway
// still open. The application keeps neither the handles nor the names: what
// remains is what the SDK tracks.
func deviceHeap(ctx context.Context, cfg config) (deviceHeapResult, error) {
	if cfg.Tbtest && cfg.Token == "" {
		return deviceHeapTbtest(ctx, cfg)
	}
	g, err := tbgateway.Dial(ctx, cfg.Broker, append([]tbgateway.Option{
		tbgateway.WithClientID(clientID("bench-devices-")),
		tbgateway.WithQoS(byte(cfg.QoS)),
		tbgateway.WithMaxInflight(cfg.Inflight)}, cfg.tokenOption()...)...)
	if err != nil {
		return deviceHeapResult{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = g.Close(cctx)
	}()
	before := liveHeap()
	start := time.Now()
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	// Connect blocks until its PUBACK: keep several windows' worth of calls
	// going at once.
	for range min(4*cfg.Inflight, 1024) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(cfg.HeapDevices) || ctx.Err() != nil {
					return
				}
				if _, err := g.Connect(ctx, fmt.Sprintf("Sensor %06d", i)); err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if n := failed.Load(); n > 0 {
		return deviceHeapResult{}, fmt.Errorf("%d connects failed, first: %w", n, firstErr)
	}
	after := liveHeap()
	if cfg.MemProfile != "" {
		if err := writeHeapProfile(cfg.MemProfile); err != nil {
			return deviceHeapResult{}, err
		}
	}
	if n := len(g.Devices()); n != cfg.HeapDevices {
		return deviceHeapResult{}, fmt.Errorf("gateway tracks %d devices, want %d", n, cfg.HeapDevices)
	}
	var grown uint64
	if after > before {
		grown = after - before
	}
	return deviceHeapResult{bytes: grown, took: took}, nil
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// startProfiles starts the CPU profile and execution trace of one run,
// into files named with the run's name before the extension (cpu.pprof ->
// cpu-sdk.pprof).
func startProfiles(cfg config, run string) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, f := range stops {
			f()
		}
	}
	create := func(path string) (*os.File, error) {
		ext := filepath.Ext(path)
		return os.Create(strings.TrimSuffix(path, ext) + "-" + run + ext)
	}
	if cfg.CPUProfile != "" {
		f, err := create(cfg.CPUProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
	}
	if cfg.Trace != "" {
		f, err := create(cfg.Trace)
		if err != nil {
			stop()
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			stop()
			return nil, err
		}
		stops = append(stops, func() { trace.Stop(); f.Close() })
	}
	return stop, nil
}

// ---------------------------------------------------------------- broker

type embeddedBroker struct {
	url    string
	server *mochi.Server
}

// startBroker starts mochi on a free loopback port, with limits wide
// enough that the subscriber's backlog never makes it drop a message.
func startBroker() (*embeddedBroker, error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1 << 18
	caps.MaximumInflight = math.MaxUint16
	caps.ReceiveMaximum = math.MaxUint16
	s := mochi.New(&mochi.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: 64 << 10,
		ClientNetReadBufferSize:  64 << 10,
		Logger:                   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	l := listeners.NewTCP(listeners.Config{ID: "bench", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		return nil, err
	}
	if err := s.Serve(); err != nil {
		return nil, err
	}
	return &embeddedBroker{url: "tcp://" + l.Address(), server: s}, nil
}

func (b *embeddedBroker) Close() { _ = b.server.Close() }
