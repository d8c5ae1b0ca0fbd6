package tbtest

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"strconv"
	"strings"
)

// Firmware and software updates of the gateway itself (WIRE §10.8): a test
// assigns a package, the server sets the fw_* (sw_*) shared attributes and
// serves the package in chunks on v2/fw/request/{id}/chunk/{n}.

// Checksum algorithms of an OTA package (ThingsBoard's ChecksumAlgorithm,
// WIRE §10.8), the values of Firmware.Algorithm and of fw_checksum_algorithm.
const (
	// ChecksumMD5 is MD5, lowercase hex.
	ChecksumMD5 = "MD5"
	// ChecksumSHA256 is SHA-256, lowercase hex; the default.
	ChecksumSHA256 = "SHA256"
	// ChecksumSHA384 is SHA-384, lowercase hex.
	ChecksumSHA384 = "SHA384"
	// ChecksumSHA512 is SHA-512, lowercase hex.
	ChecksumSHA512 = "SHA512"
	// ChecksumCRC32 is CRC-32 (IEEE) as Guava prints it: the four bytes
	// of the value little-endian, in hex (0x414fa339 → "39a34f41").
	ChecksumCRC32 = "CRC32"
	// ChecksumMurmur332 is MurmurHash3 x86 32-bit, seed 0, printed like CRC32.
	ChecksumMurmur332 = "MURMUR3_32"
	// ChecksumMurmur128 is MurmurHash3 x64 128-bit, seed 0: h1 then h2,
	// each little-endian, in hex (Guava's murmur3_128).
	ChecksumMurmur128 = "MURMUR3_128"
)

// Firmware is an OTA package assigned to a gateway with AssignFirmware or
// AssignSoftware.
type Firmware struct {
	Title   string
	Version string
	// Tag is optional (fw_tag is only set when non-empty).
	Tag string
	// Data is the uploaded package the server serves in chunks. With URL
	// set and Data nil, fw_size and the checksum are left out (an external
	// package whose size is not known).
	Data []byte
	// URL makes it an external package: fw_url is set.
	URL string
	// Algorithm is the checksum algorithm, ChecksumSHA256 when empty.
	Algorithm string
	// Checksum overrides the computed checksum (to test a client's
	// verification failure); empty means computed from Data the way
	// ThingsBoard does (Guava's HashCode.toString: lowercase hex of the
	// hash bytes, which for CRC32 and MURMUR3_32 is the little-endian
	// byte order of the 32-bit value).
	Checksum string
}

// otaKinds are the two package types, indexed by otaFirmware/otaSoftware.
var otaKinds = [2]string{"fw", "sw"}

const (
	otaFirmware = 0
	otaSoftware = 1
)

// otaPackage is an assigned package.
type otaPackage struct{ data []byte }

// otaKeys are the shared attributes of a package type, in the order they
// are deleted.
func otaKeys(kind string) []string {
	return []string{kind + "_title", kind + "_version", kind + "_tag", kind + "_size",
		kind + "_checksum_algorithm", kind + "_checksum", kind + "_url"}
}

// AssignFirmware assigns fw to the gateway with accessToken: it sets the
// shared attributes fw_title, fw_version, fw_tag (if any), fw_size,
// fw_checksum_algorithm and fw_checksum, or fw_url, replacing those of an
// earlier assignment, and pushes them like SetGatewaySharedAttributes.
// Downloads started before keep the package they started with (ThingsBoard
// caches it per request id). It fails for an unknown token, a missing
// title or version, or an unknown checksum algorithm.
func (s *Server) AssignFirmware(accessToken string, fw Firmware) error {
	return s.assignOTA(accessToken, otaFirmware, fw)
}

// AssignSoftware is AssignFirmware for software: sw_* attributes and the
// v2/sw/* download topics.
func (s *Server) AssignSoftware(accessToken string, sw Firmware) error {
	return s.assignOTA(accessToken, otaSoftware, sw)
}

// UnassignFirmware removes the gateway's firmware: the fw_* shared
// attributes are deleted (pushed as {"deleted":[…]}) and new download
// requests are answered with a NOT_FOUND error and a close.
func (s *Server) UnassignFirmware(accessToken string) { s.unassignOTA(accessToken, otaFirmware) }

// UnassignSoftware is UnassignFirmware for software.
func (s *Server) UnassignSoftware(accessToken string) { s.unassignOTA(accessToken, otaSoftware) }

func (s *Server) assignOTA(token string, kind int, fw Firmware) error {
	if fw.Title == "" || fw.Version == "" {
		return errors.New("tbtest: OTA package needs a title and a version")
	}
	alg := fw.Algorithm
	if alg == "" {
		alg = ChecksumSHA256
	}
	sum, err := otaChecksum(alg, fw.Data)
	if err != nil {
		return err
	}
	if fw.Checksum != "" {
		sum = fw.Checksum
	}
	k := otaKinds[kind]
	values := map[string]any{k + "_title": fw.Title, k + "_version": fw.Version}
	if fw.Tag != "" {
		values[k+"_tag"] = fw.Tag
	}
	if fw.URL != "" {
		values[k+"_url"] = fw.URL
	}
	if fw.URL == "" || fw.Data != nil {
		values[k+"_size"] = int64(len(fw.Data))
		values[k+"_checksum_algorithm"] = alg
		values[k+"_checksum"] = sum
	}
	s.mu.Lock()
	g := s.gateways[token]
	if g == nil {
		s.mu.Unlock()
		return ErrUnknownGateway
	}
	for _, key := range otaKeys(k) {
		delete(g.dev.shared, key)
	}
	g.ota[kind] = &otaPackage{data: cloneBytes(fw.Data)}
	s.mu.Unlock()
	s.SetGatewaySharedAttributes(token, values)
	return nil
}

func (s *Server) unassignOTA(token string, kind int) {
	s.mu.Lock()
	g := s.gateways[token]
	if g != nil {
		g.ota[kind] = nil
	}
	s.mu.Unlock()
	if g != nil {
		s.DeleteGatewaySharedAttributes(token, otaKeys(otaKinds[kind])...)
	}
}

// otaChecksum computes a package checksum as ThingsBoard's
// BaseOtaPackageService.generateChecksum (Guava hash functions).
func otaChecksum(alg string, data []byte) (string, error) {
	switch alg {
	case ChecksumMD5:
		h := md5.Sum(data)
		return hex.EncodeToString(h[:]), nil
	case ChecksumSHA256:
		h := sha256.Sum256(data)
		return hex.EncodeToString(h[:]), nil
	case ChecksumSHA384:
		h := sha512.Sum384(data)
		return hex.EncodeToString(h[:]), nil
	case ChecksumSHA512:
		h := sha512.Sum512(data)
		return hex.EncodeToString(h[:]), nil
	case ChecksumCRC32:
		return hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(data))), nil
	case ChecksumMurmur332:
		return hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, murmur3x86_32(data))), nil
	case ChecksumMurmur128:
		h1, h2 := murmur3x64_128(data)
		return hex.EncodeToString(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, h1), h2)), nil
	}
	return "", fmt.Errorf("tbtest: unknown checksum algorithm %q", alg)
}

// murmur3x86_32 is MurmurHash3_x86_32 with seed 0 (Guava murmur3_32).
func murmur3x86_32(data []byte) uint32 {
	const c1, c2 = 0xcc9e2d51, 0x1b873593
	var h uint32
	n := len(data)
	for len(data) >= 4 {
		k := binary.LittleEndian.Uint32(data)
		data = data[4:]
		k *= c1
		k = bits.RotateLeft32(k, 15)
		k *= c2
		h ^= k
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	var k uint32
	switch len(data) {
	case 3:
		k ^= uint32(data[2]) << 16
		fallthrough
	case 2:
		k ^= uint32(data[1]) << 8
		fallthrough
	case 1:
		k ^= uint32(data[0])
		k *= c1
		k = bits.RotateLeft32(k, 15)
		k *= c2
		h ^= k
	}
	h ^= uint32(n)
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// murmur3x64_128 is MurmurHash3_x64_128 with seed 0 (Guava murmur3_128).
func murmur3x64_128(data []byte) (uint64, uint64) {
	const c1, c2 = 0x87c37b91114253d5, 0x4cf5ad432745937f
	var h1, h2 uint64
	n := len(data)
	for len(data) >= 16 {
		k1 := binary.LittleEndian.Uint64(data)
		k2 := binary.LittleEndian.Uint64(data[8:])
		data = data[16:]
		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
		h1 = bits.RotateLeft64(h1, 27)
		h1 += h2
		h1 = h1*5 + 0x52dce729
		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
		h2 = bits.RotateLeft64(h2, 31)
		h2 += h1
		h2 = h2*5 + 0x38495ab5
	}
	var k1, k2 uint64
	for i := len(data) - 1; i >= 8; i-- {
		k2 ^= uint64(data[i]) << (uint(i-8) * 8)
	}
	if len(data) > 8 {
		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
	}
	for i := min(len(data), 8) - 1; i >= 0; i-- {
		k1 ^= uint64(data[i]) << (uint(i) * 8)
	}
	if len(data) > 0 {
		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
	}
	h1 ^= uint64(n)
	h2 ^= uint64(n)
	h1 += h2
	h2 += h1
	h1, h2 = fmix64(h1), fmix64(h2)
	h1 += h2
	h2 += h1
	return h1, h2
}

func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// otaRequest parses v2/{fw,sw}/request/{requestId}/chunk/{n} (both
// decimal, as ThingsBoard's pattern requires).
func otaRequest(topic string) (kind int, req string, chunk int, ok bool) {
	for i, k := range otaKinds {
		rest, found := strings.CutPrefix(topic, "v2/"+k+"/request/")
		if !found {
			continue
		}
		parts := strings.Split(rest, "/")
		if len(parts) != 3 || parts[1] != "chunk" || !digits(parts[0]) || !digits(parts[2]) {
			return 0, "", 0, false
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			return 0, "", 0, false
		}
		return i, parts[0], n, true
	}
	return 0, "", 0, false
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// onOTARequest serves one chunk request (MqttTransportHandler
// getOtaPackageCallback/sendOtaPackage): the payload is the chunk size as
// decimal text, remembered per request id (an empty payload reuses it, and
// with none known the whole package is sent); the PUBACK comes first, then
// the chunk on v2/{fw,sw}/response/{requestId}/chunk/{n}, empty past the
// end. A chunk size above maxPayloadSize, or no package assigned, publishes
// the error (PAYLOAD_TOO_LARGE, NOT_FOUND) on v2/{fw,sw}/error and closes
// the connection without PUBACK (DISCONNECT 0x83 on MQTT 5). A payload that
// is not an integer gets PUBACK 0x83 and a close.
func (s *Server) onOTARequest(u *up, kind int, req string, chunk int) {
	k := otaKinds[kind]
	size := 0
	if len(u.pk.Payload) > 0 {
		n, err := strconv.ParseInt(string(u.pk.Payload), 10, 32)
		if err != nil {
			s.shapeLocked(u, "OTA chunk size is not an integer")
			return
		}
		size = int(n)
	}
	c := u.c
	key := k + "/" + req
	if c.otaSize == nil {
		c.otaSize, c.otaPkg = map[string]int{}, map[string]*otaPackage{}
	}
	if size > 0 {
		c.otaSize[key] = size
	} else {
		size = c.otaSize[key]
	}
	otaError := func(msg string) {
		u.p.refuse()
		u.p.after = append(u.p.after, s.publishLocked(c, "v2/"+k+"/error", []byte(msg)))
		u.p.closeWith(codeImplementationError)
		s.closeConnLocked(u, "OTA request: "+msg)
	}
	if size > s.cfg.maxPayload {
		otaError("PAYLOAD_TOO_LARGE")
		return
	}
	pkg := c.otaPkg[key]
	if pkg == nil {
		if !s.selfLimitLocked(u, false, 0) {
			return
		}
		if pkg = c.gw.ota[kind]; pkg == nil {
			otaError("NOT_FOUND")
			return
		}
		c.otaPkg[key] = pkg
	}
	var data []byte
	switch {
	case size < 1:
		data = pkg.data
	case chunk <= len(pkg.data)/size && size*chunk < len(pkg.data):
		start := size * chunk
		data = pkg.data[start:min(start+size, len(pkg.data))]
	}
	topic := "v2/" + k + "/response/" + req + "/chunk/" + strconv.Itoa(chunk)
	u.p.after = append(u.p.after, s.publishLocked(c, topic, cloneBytes(data)))
}
