"""Sample rows for trying poolctl out: Chinese titles and article bodies, made on the fly.

Texts are slices of a random corpus built once from a word list, so a million
rows cost a second or two to make. Short texts (titles) are 15 to 40
characters, long ones (bodies) 300 to 3000, spread over groups and batches.

Two words hold characters beyond U+FFFF, which take 4 bytes in UTF-8, as
real Chinese text does now and then: the calligrapher 赵孟𫖯 and the dental
term 𬌗面. A column in utf8mb3 cannot store them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from poolctl.config import PoolTypeSettings

WORDS = (
    "城市 发展 经济 科技 创新 文化 历史 教育 健康 生活 旅游 美食 体育 音乐 电影 艺术 自然 环境 "
    "保护 研究 发现 技术 网络 数据 智能 未来 社会 公司 市场 产品 服务 用户 设计 工程 建筑 交通 "
    "能源 农业 工业 金融 投资 政策 管理 团队 合作 项目 计划 目标 方法 问题 分析 报告 新闻 故事 "
    "春天 夏天 秋天 冬天 山水 河流 海洋 森林 花园 家庭 朋友 孩子 老师 学生 医生 工人 农民 作家 "
    "我们 他们 今天 明天 昨天 如何 为什么 什么 这个 那个 一个 重要 新的 最好 更多 全面 快速 稳定 "
    "提升 推动 加强 完善 实现 建设 改革 开放 增长 变化 趋势 机会 挑战 经验 知识 方案 指南 入门 "
    "深度 解读 观察 评论 专题 访谈 回顾 展望 年度 季度 北京 上海 广州 深圳 杭州 成都 武汉 西安 "
    "长江 黄河 高铁 航天 芯片 软件 手机 电脑 汽车 电池 机器人 云计算 大数据 人工智能 区块链 "
    "赵孟𫖯 𬌗面"
).split()
FOUR_BYTE_EXAMPLE = "𫖯"  # one of the characters beyond U+FFFF in WORDS
PUNCTUATION = "，，，。。、；！？"
SHORT_LENGTHS = (15, 40)
LONG_LENGTHS = (300, 3000)
CORPUS_CHARS = 400_000


class SampleText:
    """Makes random Chinese texts of the lengths a pool type's text_type calls for."""

    def __init__(self, seed: int | None = None) -> None:
        self.random = random.Random(seed)
        self._plain = self._corpus(punctuated=False)
        self._prose = self._corpus(punctuated=True)

    def _corpus(self, punctuated: bool) -> str:
        parts = []
        size = 0
        while size < CORPUS_CHARS:
            word = self.random.choice(WORDS)
            if punctuated and self.random.random() < 0.15:
                word += self.random.choice(PUNCTUATION)
            parts.append(word)
            size += len(word)
        return "".join(parts)

    def text(self, text_type: str) -> str:
        corpus = self._plain if text_type == "short" else self._prose
        low, high = SHORT_LENGTHS if text_type == "short" else LONG_LENGTHS
        length = self.random.randint(low, high)
        start = self.random.randrange(0, len(corpus) - length)
        return corpus[start : start + length]


def sample_rows(spec: PoolTypeSettings, count: int, groups: int, batches: int, seed: int | None = None) -> Iterator[tuple[int, int, str]]:
    """Yield count (group, batch, text) rows: groups 1..groups, batches 1..batches in load order."""
    maker = SampleText(seed)
    pick_group = maker.random.randint
    for index in range(count):
        batch = 1 + index * batches // count
        yield pick_group(1, groups), batch, maker.text(spec.text_type)
