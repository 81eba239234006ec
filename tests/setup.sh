# Shared setup steps for tests/run and cluster/up (sourced, not run).
# Debian 12 packages the build and the tests need.
SL_PACKAGES=(build-essential cmake pkg-config clang libclang-rt-14-dev
	libxxhash-dev libisal-dev libcmocka-dev
	libnng-dev libprotobuf-c-dev protobuf-c-compiler libjansson-dev libedit-dev
	prometheus fio)

sl_setup_packages() {
	local missing=() p
	for p in "${SL_PACKAGES[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing: ${missing[*]}"
		local sudo=""
		[ "$(id -u)" = 0 ] || sudo=sudo
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
	fi
}

# sl_build DIR BUILD_TYPE [cmake args...]
sl_build() {
	local dir=$1 type=$2
	shift 2
	cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null
	cmake --build "$dir" -j "$(nproc)"
}
