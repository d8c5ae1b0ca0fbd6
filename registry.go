package tbgateway

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// registry is what the gateway remembers of the devices behind it: those
// whose connect the server acknowledged (announced again on every new
// connection) and the renames the server announced.
type registry struct {
	mu         sync.RWMutex
	devices    map[string]*deviceEntry
	renamed    map[string]string // old name -> new name
	hasRenames atomic.Bool
}

// deviceEntry is what the gateway remembers of a connected device.
type deviceEntry struct {
	profile    string
	lastUplink atomic.Int64 // unix nanoseconds of the last acknowledged uplink
}

func (r *registry) add(name, profile string) {
	e := &deviceEntry{profile: profile}
	e.lastUplink.Store(time.Now().UnixNano())
	r.mu.Lock()
	if r.devices == nil {
		r.devices = make(map[string]*deviceEntry)
	}
	r.devices[name] = e
	r.mu.Unlock()
}

func (r *registry) remove(name string) {
	r.mu.Lock()
	delete(r.devices, name)
	r.mu.Unlock()
}

// profile returns the profile of a connected device.
func (r *registry) profile(name string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[r.currentLocked(name)]
	if !ok {
		return "", false
	}
	return e.profile, true
}

// snapshot returns the connected devices with their profiles.
func (r *registry) snapshot() map[string]string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[string]string, len(r.devices))
	for n, e := range r.devices {
		out[n] = e.profile
	}
	return out
}

// list returns the connected devices sorted by name.
func (r *registry) list() []DeviceInfo {
	r.mu.RLock()
	out := make([]DeviceInfo, 0, len(r.devices))
	for n, e := range r.devices {
		out = append(out, DeviceInfo{Name: n, Profile: e.profile})
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b DeviceInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// quiet returns the devices whose last uplink is older than cutoff.
func (r *registry) quiet(cutoff int64) []DeviceInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []DeviceInfo
	for n, e := range r.devices {
		if e.lastUplink.Load() < cutoff {
			out = append(out, DeviceInfo{Name: n, Profile: e.profile})
		}
	}
	return out
}

// noteUplink records that data of device name reached the server.
func (r *registry) noteUplink(name string) {
	if name == "" {
		return
	}
	r.mu.RLock()
	e := r.devices[name]
	r.mu.RUnlock()
	if e != nil {
		e.lastUplink.Store(time.Now().UnixNano())
	}
}

// rename moves a device to its new name and makes handles of old send
// under it. It reports whether the device was connected, and its profile.
func (r *registry) rename(old, renamed string) (profile string, connected bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.devices[old]; ok {
		delete(r.devices, old)
		r.devices[renamed] = e
		profile, connected = e.profile, true
	}
	if r.renamed == nil {
		r.renamed = map[string]string{}
	}
	r.renamed[old] = renamed
	for k, v := range r.renamed {
		if v == old { // a chain of renames
			r.renamed[k] = renamed
		}
	}
	r.hasRenames.Store(true)
	return profile, connected
}

// current follows renames announced by the server.
func (r *registry) current(name string) string {
	if !r.hasRenames.Load() {
		return name
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.currentLocked(name)
}

func (r *registry) currentLocked(name string) string {
	if n, ok := r.renamed[name]; ok {
		return n
	}
	return name
}
