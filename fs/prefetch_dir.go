package fs

// prefetchDir queues, the first time directory d is listed, the chunks from
// the first chunk of its first regular file on, in blob order, up to
// Options.DirPrefetch compressed bytes per layer: a program that lists a
// directory (Python's import system does, for every package) usually opens
// some of its files next, and a directory's files sit together in the tar.
func (r *Root) prefetchDir(d uint32) {
	if r.opts.DirPrefetch <= 0 || r.opts.Cache == nil {
		return
	}
	if _, dup := r.listed.LoadOrStore(d, struct{}{}); dup {
		return
	}
	nd := &r.t.nodes[d]
	first := map[*layer]int{}
	for c := nd.kids; c < nd.kids+nd.nkids; c++ {
		data := r.t.nodes[c].data
		if r.t.nodes[data].kind != kindEntry {
			continue
		}
		l, e := r.t.dataEntry(data)
		if !e.IsRegular() || e.NumChunks == 0 {
			continue
		}
		if f, ok := first[l]; !ok || int(e.FirstChunk) < f {
			first[l] = int(e.FirstChunk)
		}
	}
	for l, from := range first {
		to := from
		for sum := int64(0); to < len(l.toc.Chunks) && sum < r.opts.DirPrefetch; to++ {
			sum += int64(l.toc.Chunks[to].CompressedSize)
		}
		if r.queuePrefetch(prefetchJob{l: l, first: from, last: to, path: r.t.name(d) + "/"}) {
			r.stats.neighbourJobs.Add(1)
		}
	}
}
