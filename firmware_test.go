package tbgateway_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// applied records what an UpdateHandler was given.
type applied struct {
	mu   sync.Mutex
	pkgs []tb.Package
	data [][]byte
	got  chan struct{}
	err  error
}

func newApplied() *applied { return &applied{got: make(chan struct{}, 16)} }

func (a *applied) ApplyUpdate(_ context.Context, p tb.Package, data []byte) error {
	a.mu.Lock()
	a.pkgs = append(a.pkgs, p)
	a.data = append(a.data, data)
	a.mu.Unlock()
	a.got <- struct{}{}
	return a.err
}

func packageData(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

// states returns the kind's states the gateway reported, in order.
func states(srv *tbtest.Server, device, kind string) []string {
	var out []string
	for _, p := range srv.Series(device, kind+"_state") {
		out = append(out, p.Value.(string))
	}
	return out
}

// waitState waits until the device's last reported state is want.
func waitState(t *testing.T, srv *tbtest.Server, device, kind, want string) {
	t.Helper()
	require.Eventually(t, func() bool {
		s := states(srv, device, kind)
		return len(s) > 0 && s[len(s)-1] == want
	}, 20*time.Second, 5*time.Millisecond, "%s_state %s of %s: %v", kind, want, device, states(srv, device, kind))
}

// chunkSizes records the sizes the gateway asks for in chunk requests.
func chunkSizes(srv *tbtest.Server) func() []int {
	var mu sync.Mutex
	var sizes []int
	srv.Control(tbtest.Match{Topic: "v2/+/request/+/chunk/+"}, func(p *tbtest.Packet) tbtest.Action {
		p.KeepControl()
		n, _ := strconv.Atoi(string(p.Payload))
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		return tbtest.Pass()
	})
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sizes...)
	}
}

// TestFirmwareUpdate installs a firmware package of several chunks for
// every checksum algorithm ThingsBoard offers: chunks never exceed the
// server's maximum payload size, every step is reported, and the handler
// gets the package intact.
func TestFirmwareUpdate(t *testing.T) {
	const limit = 4096
	data := packageData(3*limit + 123)
	gwName := "Gateway " + tbtest.DefaultToken
	for i, alg := range []string{tbtest.ChecksumMD5, tbtest.ChecksumSHA256, tbtest.ChecksumSHA384, tbtest.ChecksumSHA512,
		tbtest.ChecksumCRC32, tbtest.ChecksumMurmur332, tbtest.ChecksumMurmur128} {
		t.Run(alg, func(t *testing.T) {
			srv := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(limit))
			sizes := chunkSizes(srv)
			a := newApplied()
			installed := tb.Package{Kind: tb.PackageFirmware, Title: "gw-fw", Version: "1.0.0"}
			g := dialTB(t, srv, tb.WithUpdates(a, installed))
			// The installed package is reported on connecting.
			require.Eventually(t, func() bool {
				p, ok := srv.Latest(gwName, "current_fw_version")
				return ok && p.Value == "1.0.0"
			}, 10*time.Second, 5*time.Millisecond)

			version := "2.0." + strconv.Itoa(i)
			require.NoError(t, srv.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "gw-fw", Version: version, Data: data, Algorithm: alg}))
			<-a.got
			waitState(t, srv, gwName, "fw", "UPDATED")
			assert.Equal(t, []string{"DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED"}, states(srv, gwName, "fw"))
			a.mu.Lock()
			assert.True(t, bytes.Equal(data, a.data[0]), "the package arrives intact")
			assert.Equal(t, alg, a.pkgs[0].ChecksumAlgorithm)
			assert.Equal(t, int64(len(data)), a.pkgs[0].Size)
			a.mu.Unlock()
			p, _ := srv.Latest(gwName, "current_fw_version")
			assert.Equal(t, version, p.Value)
			got := sizes()
			assert.GreaterOrEqual(t, len(got), 4, "several chunks")
			for _, s := range got {
				assert.LessOrEqual(t, s, limit, "a chunk larger than the payload limit closes the connection")
			}
			assert.Zero(t, g.Stats().Reconnects, "never disconnected")
		})
	}
}

// TestFirmwareChecksumMismatch: a package that does not match its
// checksum is reported FAILED with the reason, and never applied.
func TestFirmwareChecksumMismatch(t *testing.T) {
	srv := tbtest.NewServer(t)
	a := newApplied()
	dialTB(t, srv, tb.WithUpdates(a))
	gwName := "Gateway " + tbtest.DefaultToken
	require.NoError(t, srv.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "gw-fw", Version: "2.0.0", Data: packageData(1000),
		Checksum: strings.Repeat("0", 64)}))
	waitState(t, srv, gwName, "fw", "FAILED")
	assert.Equal(t, []string{"DOWNLOADING", "DOWNLOADED", "FAILED"}, states(srv, gwName, "fw"))
	e, ok := srv.Latest(gwName, "fw_error")
	require.True(t, ok)
	assert.Contains(t, e.Value, "checksum mismatch")
	assert.Empty(t, a.got, "not applied")
}

// TestSoftwareUpdateAcrossReconnect: the connection is closed in the
// middle of a software download (and the package is assigned before the
// gateway connects): the download resumes on the next connection with the
// same request id and the package arrives intact.
func TestSoftwareUpdateAcrossReconnect(t *testing.T) {
	const limit = 2048
	srv := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(limit))
	data := packageData(5*limit + 7)
	require.NoError(t, srv.AssignSoftware(tbtest.DefaultToken, tbtest.Firmware{Title: "agent", Version: "3.1", Data: data}))
	var mu sync.Mutex
	var ids []string
	srv.Control(tbtest.Match{Topic: "v2/sw/request/+/chunk/+"}, func(p *tbtest.Packet) tbtest.Action {
		p.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, strings.Split(p.Topic, "/")[3])
		if p.Count == 3 {
			return tbtest.Close() // the third chunk request ends the connection
		}
		return tbtest.Pass()
	})
	a := newApplied()
	g := dialTB(t, srv, tb.WithUpdates(a), tb.WithMaxReconnectDelay(100*time.Millisecond))
	<-a.got
	waitState(t, srv, "Gateway "+tbtest.DefaultToken, "sw", "UPDATED")
	a.mu.Lock()
	assert.True(t, bytes.Equal(data, a.data[0]), "intact across the reconnect")
	a.mu.Unlock()
	assert.GreaterOrEqual(t, g.Stats().Reconnects, uint64(1))
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		assert.Equal(t, ids[0], id, "one request id for the whole download")
	}
}

// TestDevicePackage: a package assigned to a device behind the gateway is
// surfaced typed, and the device's steps are reported as its telemetry.
func TestDevicePackage(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv)
	ctx := ctxT(t)
	got := make(chan tb.Package, 1)
	g.OnDevicePackage(tb.PackageHandlerFunc(func(_ context.Context, device string, p tb.Package) {
		if device == "Meter" {
			got <- p
		}
	}))
	_, err := g.Connect(ctx, "Meter")
	require.NoError(t, err)
	srv.SetSharedAttributes("Meter", map[string]any{"fw_title": "meter-fw", "fw_version": "7.0.1", "fw_url": "https://updates.example/meter-7.bin"})
	p := <-got
	assert.Equal(t, tb.Package{Kind: tb.PackageFirmware, Title: "meter-fw", Version: "7.0.1", URL: "https://updates.example/meter-7.bin"}, p)

	dev := g.Device("Meter")
	require.NoError(t, dev.ReportUpdateState(ctx, p, tb.UpdateDownloading, nil))
	require.NoError(t, dev.ReportUpdateState(ctx, p, tb.UpdateUpdated, nil))
	assert.Equal(t, []string{"DOWNLOADING", "UPDATED"}, states(srv, "Meter", "fw"))
	v, _ := srv.Latest("Meter", "current_fw_version")
	assert.Equal(t, "7.0.1", v.Value)
}

func ExampleWithUpdates() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	done := make(chan struct{})
	install := tb.UpdateHandlerFunc(func(ctx context.Context, p tb.Package, data []byte) error {
		fmt.Printf("installing %s %s: %d bytes\n", p.Title, p.Version, len(data))
		close(done)
		return nil // reported UPDATED
	})
	gw, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken),
		tb.WithUpdates(install, tb.Package{Kind: tb.PackageFirmware, Title: "gateway-fw", Version: "1.0.0"}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close(ctx)
	_ = srv.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "gateway-fw", Version: "1.1.0", Data: make([]byte, 100_000)})
	<-done
	// Output:
	// installing gateway-fw 1.1.0: 100000 bytes
}
