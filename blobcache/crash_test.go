package blobcache_test

func blobcacheCrashChild() bool { return false }
