package tbgateway

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/twmb/murmur3"
)

// PackageKind says whether a package is firmware or software.
type PackageKind string

// Package kinds: the prefix of their shared attributes (fw_*, sw_*) and
// of their download topics (v2/fw/*, v2/sw/*).
const (
	PackageFirmware PackageKind = "fw"
	PackageSoftware PackageKind = "sw"
)

// Package is a firmware or software package ThingsBoard assigned to a
// device, as its fw_* (or sw_*) shared attributes describe it.
type Package struct {
	Kind    PackageKind
	Title   string
	Version string
	Tag     string // optional
	// Size, ChecksumAlgorithm and Checksum describe a package uploaded to
	// ThingsBoard; URL one kept elsewhere (the three may then be unknown).
	Size              int64
	ChecksumAlgorithm string // MD5, SHA256, SHA384, SHA512, CRC32, MURMUR3_32 or MURMUR3_128
	Checksum          string
	URL               string
}

// UpdateState is a step of an update, reported as fw_state (sw_state).
type UpdateState string

// Update states, as ThingsBoard's dashboards show them.
const (
	UpdateDownloading UpdateState = "DOWNLOADING"
	UpdateDownloaded  UpdateState = "DOWNLOADED"
	UpdateVerified    UpdateState = "VERIFIED"
	UpdateUpdating    UpdateState = "UPDATING"
	UpdateUpdated     UpdateState = "UPDATED"
	UpdateFailed      UpdateState = "FAILED"
)

// ErrChecksum: a downloaded package does not match its checksum.
var ErrChecksum = errors.New("tbgateway: package checksum mismatch")

// UpdateHandler installs a package assigned to the gateway itself, once
// it is downloaded and verified (data is nil for a URL package, which the
// handler fetches itself). Returning nil reports the update UPDATED (and
// the package as the current one); an error reports it FAILED, with the
// error's text as fw_error. A handler that must restart the process to
// finish reports the outcome after the restart with
// GatewayDevice.ReportUpdateState, and lists the package as installed in
// WithUpdates.
type UpdateHandler interface {
	ApplyUpdate(ctx context.Context, p Package, data []byte) error
}

// UpdateHandlerFunc adapts a function to UpdateHandler.
type UpdateHandlerFunc func(ctx context.Context, p Package, data []byte) error

// ApplyUpdate calls f.
func (f UpdateHandlerFunc) ApplyUpdate(ctx context.Context, p Package, data []byte) error {
	return f(ctx, p, data)
}

// PackageHandler is told of a package assigned to a device behind the
// gateway. ThingsBoard has no download topic for such devices: it is the
// application's to fetch (a URL package needs no credentials) and
// install, reporting the steps with Device.ReportUpdateState. Handlers
// run on the attribute-update lane, in order.
type PackageHandler interface {
	HandlePackage(ctx context.Context, device string, p Package)
}

// PackageHandlerFunc adapts a function to PackageHandler.
type PackageHandlerFunc func(ctx context.Context, device string, p Package)

// HandlePackage calls f.
func (f PackageHandlerFunc) HandlePackage(ctx context.Context, device string, p Package) {
	f(ctx, device, p)
}

// OnDevicePackage sets the handler for packages assigned to devices behind
// the gateway (nil removes it). Their fw_* and sw_* attributes still reach
// the attribute-update handlers too.
func (g *Gateway) OnDevicePackage(h PackageHandler) {
	g.hs.mu.Lock()
	g.hs.pkg = h
	g.hs.mu.Unlock()
}

// WithUpdates makes the gateway install the firmware and software
// ThingsBoard assigns to the gateway device itself: on each connection it
// reports the installed packages (current_fw_title, current_fw_version)
// and asks for the assigned ones; a package whose title or version
// differs is downloaded over v2/fw (v2/sw) in chunks of the server's
// maximum payload size (a larger chunk would close the connection),
// verified against its checksum, and given to h; every step is reported
// as fw_state (sw_state), a failure with fw_error. A connection lost
// mid-download resumes at the chunk it was waiting for, with the same
// request id, so the server serves the package it started with. A new
// assignment cancels a download under way. installed lists the packages
// the gateway runs now (Kind, Title and Version).
func WithUpdates(h UpdateHandler, installed ...Package) Option {
	return func(o *options) error {
		if h == nil {
			return invalid("nil update handler")
		}
		for _, p := range installed {
			if p.Kind != PackageFirmware && p.Kind != PackageSoftware {
				return invalid("installed package kind %q", p.Kind)
			}
		}
		o.updates, o.installed = h, installed
		return nil
	}
}

// ReportUpdateState reports a step of p's installation as the device's
// telemetry: fw_state (sw_state), with fw_error when failure is not nil,
// and current_fw_title and current_fw_version once UPDATED.
func (h *handle) ReportUpdateState(ctx context.Context, p Package, state UpdateState, failure error) error {
	return h.PublishTelemetry(ctx, Entry{Values: updateValues(p, state, failure)})
}

func updateValues(p Package, state UpdateState, failure error) Values {
	k := string(p.Kind)
	v := Values{k + "_state": string(state)}
	if failure != nil {
		v[k+"_error"] = failure.Error()
	}
	if state == UpdateUpdated {
		v["current_"+k+"_title"], v["current_"+k+"_version"] = p.Title, p.Version
	}
	return v
}

// packageKeys are the shared attributes describing a package.
func packageKeys(k PackageKind) []string {
	p := string(k) + "_"
	return []string{p + "title", p + "version", p + "tag", p + "size", p + "checksum_algorithm", p + "checksum", p + "url"}
}

// packageOf reads the package of kind k from shared attributes; false when
// they assign none (no title or version).
func packageOf(k PackageKind, v Values) (Package, bool) {
	str := func(name string) string {
		s, _ := v[string(k)+"_"+name].(string)
		return s
	}
	p := Package{Kind: k, Title: str("title"), Version: str("version"), Tag: str("tag"),
		ChecksumAlgorithm: str("checksum_algorithm"), Checksum: str("checksum"), URL: str("url")}
	switch n := v[string(k)+"_size"].(type) {
	case int64:
		p.Size = n
	case float64:
		p.Size = int64(n)
	}
	return p, p.Title != "" && p.Version != ""
}

// packages reports the packages an attribute update assigns.
func packages(u AttributeUpdate) []Package {
	var out []Package
	for _, k := range []PackageKind{PackageFirmware, PackageSoftware} {
		if p, ok := packageOf(k, u.Values); ok {
			out = append(out, p)
		}
	}
	return out
}

// verifyPackage checks data against p's checksum, computed as ThingsBoard
// does (Guava's hash functions: lowercase hex of the hash bytes, the
// 32-bit ones in little-endian order).
func verifyPackage(p Package, data []byte) error {
	if p.Checksum == "" {
		return nil // an external package of unknown checksum
	}
	if p.Size > 0 && int64(len(data)) != p.Size {
		return fmt.Errorf("%w: %d bytes, %d expected", ErrChecksum, len(data), p.Size)
	}
	var sum []byte
	switch strings.ToUpper(p.ChecksumAlgorithm) {
	case "MD5":
		h := md5.Sum(data)
		sum = h[:]
	case "SHA256", "":
		h := sha256.Sum256(data)
		sum = h[:]
	case "SHA384":
		h := sha512.Sum384(data)
		sum = h[:]
	case "SHA512":
		h := sha512.Sum512(data)
		sum = h[:]
	case "CRC32":
		sum = binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(data))
	case "MURMUR3_32":
		sum = binary.LittleEndian.AppendUint32(nil, murmur3.Sum32(data))
	case "MURMUR3_128":
		h1, h2 := murmur3.Sum128(data)
		sum = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, h1), h2)
	default:
		return fmt.Errorf("%w: unknown algorithm %q", ErrChecksum, p.ChecksumAlgorithm)
	}
	if got := hex.EncodeToString(sum); !strings.EqualFold(got, p.Checksum) {
		return fmt.Errorf("%w: %s %s, %s expected", ErrChecksum, p.ChecksumAlgorithm, got, p.Checksum)
	}
	return nil
}

// updater installs the packages assigned to the gateway itself.
type updater struct {
	g *Gateway
	h UpdateHandler

	mu        sync.Mutex
	installed map[PackageKind]Package
	running   map[PackageKind]*download
	tried     map[PackageKind]Package  // the last package attempted, done or failed
	waiting   map[chunkKey]chan []byte // chunk requests waiting for their reply
	nextID    int
	wg        sync.WaitGroup
}

// download is one installation under way.
type download struct {
	p      Package
	cancel context.CancelFunc
}

type chunkKey struct {
	kind PackageKind
	id   int
	n    int
}

func newUpdater(g *Gateway, h UpdateHandler, installed []Package) *updater {
	u := &updater{g: g, h: h, installed: map[PackageKind]Package{}, running: map[PackageKind]*download{},
		tried:   map[PackageKind]Package{},
		waiting: map[chunkKey]chan []byte{}, nextID: rand.IntN(1 << 20)}
	for _, p := range installed {
		u.installed[p.Kind] = p
	}
	return u
}

// subscriptions are the download replies' filters.
func (u *updater) subscriptions() []string {
	return []string{"v2/fw/response/+/chunk/+", "v2/sw/response/+/chunk/+"}
}

// run reports what is installed and asks for the assigned packages on
// every connection, until the gateway closes.
func (u *updater) run() {
	defer u.wg.Done()
	g := u.g
	checked := false
	for {
		st, changed := g.sess.current()
		if st != linkUp {
			checked = false
		} else if !checked {
			checked = true
			u.check(g.life.ctx)
		}
		select {
		case <-changed:
		case <-g.life.done:
			return
		}
	}
}

// check reports the installed packages and asks for the assigned ones.
func (u *updater) check(ctx context.Context) {
	g := u.g
	u.mu.Lock()
	current := Values{}
	for k, p := range u.installed {
		current["current_"+string(k)+"_title"], current["current_"+string(k)+"_version"] = p.Title, p.Version
	}
	u.mu.Unlock()
	if len(current) > 0 {
		if err := g.self.PublishTelemetry(ctx, Entry{Values: current}); err != nil {
			g.log.Warn("tbgateway: reporting installed packages failed", "err", err)
		}
	}
	keys := append(packageKeys(PackageFirmware), packageKeys(PackageSoftware)...)
	vals, err := g.self.RequestAttributes(ctx, AttributeKeys{Shared: keys})
	if err != nil {
		g.log.Warn("tbgateway: asking for assigned packages failed", "err", err)
		return
	}
	for _, p := range packages(AttributeUpdate{Values: vals.Shared}) {
		u.assign(p)
	}
}

// assign starts installing p unless it is installed or being installed;
// it cancels the download of an earlier assignment of its kind.
func (u *updater) assign(p Package) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.installed[p.Kind]; ok && cur.Title == p.Title && cur.Version == p.Version {
		return
	}
	if u.tried[p.Kind] == p {
		return // failed already: tried again only when assigned anew (or after a restart)
	}
	if d := u.running[p.Kind]; d != nil {
		if d.p == p {
			return
		}
		d.cancel()
	}
	if u.g.closed() {
		return
	}
	ctx, cancel := context.WithCancel(u.g.life.ctx)
	d := &download{p: p, cancel: cancel}
	u.running[p.Kind] = d
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer cancel()
		u.install(ctx, p)
		u.mu.Lock()
		if u.running[p.Kind] == d {
			delete(u.running, p.Kind)
			if ctx.Err() == nil {
				u.tried[p.Kind] = p
			}
		}
		u.mu.Unlock()
	}()
}

// install downloads, verifies and applies p, reporting each step.
func (u *updater) install(ctx context.Context, p Package) {
	g := u.g
	report := func(s UpdateState, failure error) {
		if err := g.self.ReportUpdateState(ctx, p, s, failure); err != nil && ctx.Err() == nil {
			g.log.Warn("tbgateway: reporting update state failed", "state", s, "err", err)
		}
	}
	fail := func(err error) {
		g.log.Error("tbgateway: update failed", "kind", p.Kind, "title", p.Title, "version", p.Version, "err", err)
		report(UpdateFailed, err)
	}
	var data []byte
	if p.URL == "" || p.Size > 0 {
		report(UpdateDownloading, nil)
		var err error
		if data, err = u.download(ctx, p); err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			return
		}
		report(UpdateDownloaded, nil)
		if err := verifyPackage(p, data); err != nil {
			fail(err)
			return
		}
		report(UpdateVerified, nil)
	}
	report(UpdateUpdating, nil)
	if err := u.apply(ctx, p, data); err != nil {
		fail(err)
		return
	}
	u.mu.Lock()
	u.installed[p.Kind] = p
	u.mu.Unlock()
	report(UpdateUpdated, nil)
	g.log.Info("tbgateway: updated", "kind", p.Kind, "title", p.Title, "version", p.Version)
}

func (u *updater) apply(ctx context.Context, p Package, data []byte) (err error) {
	defer func() {
		if v := recover(); v != nil {
			u.g.stats.panics.Add(1)
			err = fmt.Errorf("update handler panicked: %v", v)
		}
	}()
	return u.h.ApplyUpdate(ctx, p, data)
}

// download fetches p chunk by chunk with a request id of its own.
func (u *updater) download(ctx context.Context, p Package) ([]byte, error) {
	u.mu.Lock()
	u.nextID++
	id := u.nextID
	u.mu.Unlock()
	var data []byte
	for n := 0; ; n++ {
		b, err := u.chunk(ctx, p.Kind, id, n)
		if err != nil {
			return nil, err
		}
		data = append(data, b...)
		if len(b) == 0 || p.Size > 0 && int64(len(data)) >= p.Size {
			return data, nil
		}
	}
}

// chunk asks for chunk n and waits for it. The size asked is the
// server's maximum payload size: a larger one would close the whole
// connection. When the connection changes before the reply, or none
// comes within the request timeout, it asks again.
func (u *updater) chunk(ctx context.Context, kind PackageKind, id, n int) ([]byte, error) {
	g := u.g
	key := chunkKey{kind, id, n}
	ch := make(chan []byte, 1)
	u.mu.Lock()
	u.waiting[key] = ch
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.waiting, key)
		u.mu.Unlock()
	}()
	topic := "v2/" + string(kind) + "/request/" + strconv.Itoa(id) + "/chunk/" + strconv.Itoa(n)
	for attempt := 1; ; attempt++ {
		if err := u.up(ctx); err != nil {
			return nil, err
		}
		_, changed := g.sess.current()
		size := g.limit().max
		r := &outbox.Record{Topic: topic, Body: []byte(strconv.Itoa(size))}
		if err := g.publish(ctx, r); err != nil && !errors.Is(err, ErrEnqueued) {
			return nil, fmt.Errorf("tbgateway: requesting chunk %d: %w", n, err)
		}
		t := time.NewTimer(g.opts.requestTimeout)
		select {
		case b := <-ch:
			t.Stop()
			return b, nil
		case <-changed:
			g.log.Info("tbgateway: connection changed mid-download, asking again", "kind", kind, "chunk", n)
		case <-t.C:
			if attempt >= 3 {
				return nil, fmt.Errorf("tbgateway: chunk %d: no reply after %d requests", n, attempt)
			}
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// up waits until the connection is up.
func (u *updater) up(ctx context.Context) error {
	for {
		st, changed := u.g.sess.current()
		if st == linkUp {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// onPackageMessage handles the v2/fw/* and v2/sw/* downlinks: chunks,
// and the error the server sends before it closes the connection on a
// bad request.
func (g *Gateway) onPackageMessage(topic string, payload []byte) {
	switch {
	case topic == "v2/fw/error" || topic == "v2/sw/error":
		g.log.Error("tbgateway: the server refused a package download", "topic", topic, "error", string(payload))
	case g.hs.upd == nil || !g.hs.upd.onChunk(topic, payload):
		g.log.Debug("tbgateway: package message ignored", "topic", topic)
	}
}

// onChunk takes a download reply, v2/{fw,sw}/response/{id}/chunk/{n}, on
// the network goroutine.
func (u *updater) onChunk(topic string, payload []byte) bool {
	rest, ok := strings.CutPrefix(topic, "v2/")
	if !ok || len(rest) < 3 {
		return false
	}
	kind := PackageKind(rest[:2])
	parts := strings.Split(rest[2:], "/")
	if kind != PackageFirmware && kind != PackageSoftware || len(parts) != 5 || parts[1] != "response" || parts[3] != "chunk" {
		return false
	}
	id, err1 := strconv.Atoi(parts[2])
	n, err2 := strconv.Atoi(parts[4])
	if err1 != nil || err2 != nil {
		return false
	}
	u.mu.Lock()
	ch := u.waiting[chunkKey{kind, id, n}]
	u.mu.Unlock()
	if ch != nil {
		select {
		case ch <- append([]byte(nil), payload...):
		default: // a duplicate reply
		}
	}
	return true
}

// wait ends with the downloads and the check loop (after the gateway's
// life ended).
func (u *updater) wait() { u.wg.Wait() }
